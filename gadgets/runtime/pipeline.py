"""Run a chain: one thread per gadget, bounded queues between them, clean stop on any failure.

Backpressure comes from the bounded queues (bounded in items and in bytes): a slow gadget blocks its upstream, and
finally the reader of the socket or file, so memory stays bounded on a long scan. When a gadget raises, or the
client goes, the stream is cancelled: every thread gives up at its next queue operation, and a gadget deep in a
computation stops at its next ``qmri_models.interrupt.check_interrupt`` (CG and LM iterations, MC samples); the
failure is reported to the caller, and nothing is left running.
"""

import dataclasses
import logging
import threading
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ismrmrd
import numpy as np

from gadgets.runtime.chain import Chain
from qmri_models.interrupt import Interrupted, interruptible

log = logging.getLogger(__name__)

_END = object()
_POLL_S = 0.05
QUEUE_BYTES = 128 << 20
"""Bytes of arrays a queue between two gadgets holds before its producer waits (an item larger than this passes
alone): with slices of tens of MB, a count limit alone would let one stream queue gigabytes."""


class StreamCancelledError(Exception):
    """Raised inside a stage's queue operation once the stream has been cancelled."""


class Channel:
    """A FIFO between two stages, bounded in items and bytes, whose operations give up when the stream is cancelled."""

    def __init__(self, size: int, cancelled: threading.Event, *, max_bytes: int = QUEUE_BYTES) -> None:
        self._items: deque[tuple[Any, int]] = deque()
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._changed = threading.Condition()
        self._cancelled = cancelled
        self._ended = False

    def put(self, item: Any) -> None:
        """Append an item, waiting while the channel is full; raise StreamCancelledError if the stream ends."""
        n_bytes = 0 if item is _END else item_nbytes(item)
        with self._changed:
            while self._items and (len(self._items) >= self._size or self._bytes + n_bytes > self._max_bytes):
                if self._cancelled.is_set():
                    raise StreamCancelledError
                self._changed.wait(_POLL_S)
            if self._cancelled.is_set():
                raise StreamCancelledError
            self._items.append((item, n_bytes))
            self._bytes += n_bytes
            self._changed.notify_all()

    def close(self) -> None:
        """Mark the end of the items."""
        self.put(_END)

    def __iter__(self) -> Iterator[Any]:
        while not self._ended:
            with self._changed:
                while not self._items:
                    if self._cancelled.is_set():
                        return
                    self._changed.wait(_POLL_S)
                item, n_bytes = self._items.popleft()
                self._bytes -= n_bytes
                self._changed.notify_all()
            if item is _END:
                self._ended = True
                return
            yield item


def item_nbytes(item: Any) -> int:
    """Return the bytes of the arrays an item holds (readout data and trajectory, image data, dataclass fields)."""
    if isinstance(item, np.ndarray):
        return int(item.nbytes)
    if isinstance(item, ismrmrd.Acquisition):
        return int(item.data.nbytes + item.traj.nbytes)
    if isinstance(item, ismrmrd.Image | ismrmrd.Waveform):
        return int(item.data.nbytes)
    if dataclasses.is_dataclass(item):
        return sum(
            int(value.nbytes)
            for value in (getattr(item, f.name) for f in dataclasses.fields(item))
            if isinstance(value, np.ndarray)
        )
    return 0


class Connection:
    """What a gadget sees: iterate the items, ``send`` results downstream, ``header`` and ``parameters``.

    The same surface as gadgetron-python's connection (``filter``, ``config``), so gadgets run in both.
    """

    def __init__(
        self,
        inbox: Iterable[Any],
        outbox: "Outbox",
        header: Any,
        parameters: dict[str, str],
        *,
        stream: str,
        output_dir: Path,
    ) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._filters: list[Callable[[Any], bool]] = []
        self.header = header
        self.parameters = dict(parameters)
        self.stream = stream
        self.output_dir = output_dir
        """Where gadgets that write files (DICOM) put them: the replay's output folder, the server's ``--output``."""
        self.config = ET.Element("configuration")
        for name, value in self.parameters.items():
            ET.SubElement(self.config, "property", name=name, value=value)

    def __iter__(self) -> Iterator[Any]:
        for item in self._inbox:
            if all(accept(item) for accept in self._filters):
                yield item
            else:
                self.send(item)

    def send(self, item: Any) -> None:
        """Send an item to the next gadget (or to the client after the last one)."""
        self._outbox.put(item)

    def filter(self, predicate: type | Callable[[Any], bool]) -> None:
        """Only yield items that are instances of ``predicate`` (a type) or satisfy it; pass the rest on."""
        if isinstance(predicate, type):
            kind = predicate
            self._filters.append(lambda item: isinstance(item, kind))
        else:
            self._filters.append(predicate)


@dataclass(frozen=True)
class Failure:
    """What failed on a stream: where (a gadget or the input) and the exception."""

    where: str
    error: BaseException

    def __str__(self) -> str:
        return f"{self.where} failed: {type(self.error).__name__}: {self.error}"


class StreamError(RuntimeError):
    """A stream ended by a failure; ``failure`` says where and why."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class Outbox(Protocol):
    """Where a stage sends: a Channel to the next stage, or the stream's sink after the last one."""

    def put(self, item: Any) -> None:
        """Hand an item on."""

    def close(self) -> None:
        """Mark the end of the items."""


class _Input:
    """The stream's items, iterated directly by the first gadget (no thread hand-off); errors become input failures."""

    def __init__(
        self, items: Iterable[Any], cancelled: threading.Event, fail: Callable[[str, BaseException], None]
    ) -> None:
        self._items = iter(items)
        self._cancelled = cancelled
        self._fail = fail
        self.exhausted = threading.Event()
        """Set once the last item has been read (the client sent CLOSE)."""

    def __iter__(self) -> Iterator[Any]:
        while not self._cancelled.is_set():
            try:
                item = next(self._items)
            except StopIteration:
                self.exhausted.set()
                return
            except Exception as exc:  # any input error ends the stream and is reported as the input's
                self._fail("input", exc)
                raise StreamCancelledError from exc
            yield item
        raise StreamCancelledError


class _Sink:
    """The stream's sink, called directly by the last gadget; an OSError (client gone) is kept for the caller."""

    def __init__(self, sink: Callable[[Any], None], cancelled: threading.Event) -> None:
        self._sink = sink
        self._cancelled = cancelled
        self.error: BaseException | None = None

    def put(self, item: Any) -> None:
        if self._cancelled.is_set():
            raise StreamCancelledError
        try:
            self._sink(item)
        except OSError as exc:  # the client or the output file is gone; anything else is the last gadget's fault
            self.error = exc
            self._cancelled.set()
            raise StreamCancelledError from exc

    def close(self) -> None:
        """Nothing to do: the caller closes the sink."""


def run_chain(
    chain: Chain,
    header: Any,
    items: Iterable[Any],
    sink: Callable[[Any], None],
    *,
    stream: str = "stream",
    queue_size: int = 64,
    output_dir: Path | None = None,
    client_gone: Callable[[], bool] | None = None,
) -> None:
    """Run ``items`` through the chain, handing everything the last gadget sends to ``sink``.

    The first gadget reads ``items`` itself and the last one calls ``sink`` itself: a thread hand-off per item costs
    more than (de)serializing it, so only the queues between gadgets remain (bench/bench_server_throughput.py).

    Parameters
    ----------
    chain : The validated chain.
    header : The stream's parsed ISMRMRD header.
    items : The stream's items (acquisitions, waveforms, images), read lazily.
    sink : Called with each output item, in order, from the last gadget's thread.
    stream : Name of the stream for logs.
    queue_size : Items each queue between two gadgets holds before its producer waits.
    output_dir : Folder for files that gadgets write (``connection.output_dir``); the working directory if None.
    client_gone : Polled every 50 ms once the input has ended: True when the client has gone, which cancels the
        stream (its gadgets stop within an iteration) and raises ConnectionResetError.

    Raises
    ------
    StreamError
        If a gadget or the input failed; the stream was stopped and every thread has ended.
    OSError
        What ``sink`` raised when the client or the output file went away, or ConnectionResetError when
        ``client_gone`` said so, after every thread has ended.
    """
    cancelled = threading.Event()
    failures: list[Failure] = []

    def fail(where: str, error: BaseException) -> None:
        failures.append(Failure(where, error))
        cancelled.set()

    n = len(chain.stages)
    output = _Sink(sink, cancelled)
    source = _Input(items, cancelled, fail)
    inboxes: list[Iterable[Any]] = [source]
    outboxes: list[Outbox] = []
    for _ in range(n - 1):
        channel = Channel(queue_size, cancelled)
        outboxes.append(channel)
        inboxes.append(channel)
    outboxes.append(output)

    def run_stage(index: int) -> None:
        stage = chain.stages[index]
        inbox, outbox = inboxes[index], outboxes[index]
        connection = Connection(
            inbox, outbox, header, stage.properties, stream=stream, output_dir=output_dir or Path.cwd()
        )
        try:
            with interruptible(cancelled):
                stage.spec.gadget(connection)
            for leftover in inbox:
                outbox.put(leftover)
            outbox.close()
        except (StreamCancelledError, Interrupted):
            return
        except Exception as exc:  # a gadget's error ends its stream, never the process (logged with traceback)
            log.exception("%s: gadget '%s' (%s) failed", stream, stage.name, stage.spec.classname)
            fail(f"gadget '{stage.name}' ({stage.spec.classname})", exc)

    workers = [
        threading.Thread(target=run_stage, args=(i,), name=f"{stream}:{s.name}", daemon=True)
        for i, s in enumerate(chain.stages)
    ]
    for worker in workers:
        worker.start()
    gone = False
    try:
        while not cancelled.is_set() and any(worker.is_alive() for worker in workers):
            workers[-1].join(timeout=_POLL_S)
            if client_gone is not None and source.exhausted.is_set() and client_gone():
                log.warning("%s: the client has gone; stopping the stream's work", stream)
                gone = True
                break
    finally:
        cancelled.set()
        for worker in workers[1:]:
            worker.join()
        # The first gadget may sit in a read of a paused client: the failure is reported now, not when the client
        # sends again; its thread ends at its next item or when the connection closes.
        workers[0].join(timeout=_POLL_S)
    if output.error is not None:
        raise output.error
    if gone:
        raise ConnectionResetError(f"{stream}: the client went away while its stream was being processed")
    if failures:
        raise StreamError(failures[0])
