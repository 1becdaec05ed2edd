"""The MRD streaming protocol as Gadgetron speaks it, on top of ismrmrd's serialization module.

What ismrmrd's ``ProtocolDeserializer`` does not do and real clients need: config text, header and text messages
that are NUL-terminated (the length counts the NUL); a JSON TEXT message between the header and the data; bounded
reads, so garbage that decodes as a 4 GB length fails instead of allocating it; protocol errors as one exception
type with a message a client can act on.
"""

import ctypes
import json
import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import ismrmrd
import ismrmrd.xsd
import numpy as np
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.serialization import ConfigFile, ConfigText, ISMRMRDMessageID, ProtocolDeserializer, ProtocolSerializer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 30
"""Largest single read a message may ask for (1 GiB); larger is treated as a corrupt stream."""

_READ_CHUNK = 1 << 20


class ProtocolError(ValueError):
    """The byte stream does not follow the MRD protocol: says what was expected and what came."""


class _BoundedReader:
    """A binary stream whose ``read`` refuses absurd lengths and reads large messages in chunks."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def readinto(self, buffer: memoryview) -> int:
        if len(buffer) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"a message asks for {len(buffer)} bytes (limit {MAX_MESSAGE_BYTES}); corrupt stream")
        return self._stream.readinto(buffer)  # type: ignore[attr-defined]

    def read(self, n: int) -> bytes:
        if n > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"a message asks for {n} bytes (limit {MAX_MESSAGE_BYTES}); the stream is corrupt")
        if n <= _READ_CHUNK:
            return self._stream.read(n)
        parts = []
        remaining = n
        while remaining:
            part = self._stream.read(min(remaining, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)


class MrdDeserializer(ProtocolDeserializer):
    """ismrmrd's deserializer, tolerant of NUL-terminated strings, strict about lengths, fast on acquisitions.

    Acquisitions, nearly all of a raw stream, are read straight into their arrays (ismrmrd's reader allocates zeroed
    arrays and copies into them, which halves the throughput); every other message goes through ismrmrd's code.
    """

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(_BoundedReader(stream))  # type: ignore[arg-type]

    def deserialize(self) -> Generator[Any, None, None]:
        """Yield the messages up to CLOSE (see ``ProtocolDeserializer.deserialize``)."""
        while True:
            if self.peek() == ISMRMRDMessageID.ACQUISITION:
                self._peeked_id = ISMRMRDMessageID.UNPEEKED  # consumed here, not by ismrmrd's reader
                yield _read_acquisition(self._stream)  # type: ignore[arg-type]
                continue
            one = super().deserialize()
            try:
                yield next(one)
            except StopIteration:
                return
            finally:
                one.close()

    def _deserialize_ismrmrd_header(self) -> ismrmrd.xsd.ismrmrdHeader:
        text = self._deserialize_text()
        return parse_header(text)

    def _deserialize_text(self) -> str:
        text = super()._deserialize_text()
        return text.rstrip("\x00")


_ACQUISITION_HEADER_BYTES = ctypes.sizeof(AcquisitionHeader)


def _read_exactly(stream: "_BoundedReader", n: int) -> bytearray:
    """Return exactly ``n`` bytes in a new writable buffer, or raise EOFError."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        count = stream.readinto(view[got:])
        if not count:
            raise EOFError(f"the stream ended {n - got} bytes short inside a message")
        got += count
    return buffer


def _read_acquisition(stream: "_BoundedReader") -> ismrmrd.Acquisition:
    """Return one acquisition read from ``stream`` (after its message id), arrays built on the bytes read."""
    head = AcquisitionHeader.from_buffer_copy(_read_exactly(stream, _ACQUISITION_HEADER_BYTES))
    n_samples, n_coils, n_dims = head.number_of_samples, head.active_channels, head.trajectory_dimensions
    traj = np.frombuffer(_read_exactly(stream, n_samples * n_dims * 4), np.float32)
    data = np.frombuffer(_read_exactly(stream, n_samples * n_coils * 8), np.complex64)
    return ismrmrd.Acquisition(head, data.reshape(n_coils, n_samples), traj.reshape(n_samples, n_dims))


def parse_header(text: str) -> ismrmrd.xsd.ismrmrdHeader:
    """Return the parsed ISMRMRD header, or raise ProtocolError saying why it does not parse.

    Parameters
    ----------
    text : Header XML, possibly NUL-terminated.

    Returns
    -------
    The header.
    """
    try:
        return ismrmrd.xsd.CreateFromDocument(text.rstrip("\x00").encode())
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"the ISMRMRD header does not parse: {exc}") from exc


@dataclass
class StreamStart:
    """What a client sends before the data: which chain, the header, and optional JSON settings."""

    config_file: str | None
    config_text: str | None
    header: ismrmrd.xsd.ismrmrdHeader
    user_settings: dict[str, Any] = field(default_factory=dict)
    pending: Any = None
    """The first data message, read while looking for optional JSON text (None if the stream ended)."""


def read_stream_start(messages: Iterator[Any], *, require_config: bool = True) -> StreamStart:
    """Return the config, header and optional JSON settings at the head of a stream.

    Parameters
    ----------
    messages : The deserialized messages (from :func:`read_messages`).
    require_config : Whether the stream must open with a config message (stream mode with ``--chain`` need not).

    Returns
    -------
    The stream's start; ``pending`` holds the first data message already read.

    Raises
    ------
    ProtocolError
        If the stream does not open with a config message followed by a header.
    """
    first = _next(messages, "a CONFIG_FILE or CONFIG_TEXT message")
    if isinstance(first, ConfigFile):
        config_file, config_text = str(first).strip(), None
    elif isinstance(first, ConfigText):
        config_file, config_text = None, str(first).rstrip("\x00")
    elif not require_config and isinstance(first, ismrmrd.xsd.ismrmrdHeader):
        return _after_header(StreamStart(config_file=None, config_text=None, header=first), messages)
    else:
        raise ProtocolError(f"expected a CONFIG_FILE or CONFIG_TEXT message first, got {_kind(first)}")
    header = _next(messages, "the ISMRMRD HEADER message")
    if not isinstance(header, ismrmrd.xsd.ismrmrdHeader):
        raise ProtocolError(f"expected the ISMRMRD HEADER message after the config, got {_kind(header)}")
    return _after_header(StreamStart(config_file=config_file, config_text=config_text, header=header), messages)


def _after_header(start: StreamStart, messages: Iterator[Any]) -> StreamStart:
    """Return ``start`` with the JSON settings sent before the data and the first data message."""
    for message in messages:
        if isinstance(message, str) and not isinstance(message, ConfigFile | ConfigText):
            start.user_settings.update(_json_settings(message))
            continue
        start.pending = message
        break
    return start


def _json_settings(text: str) -> dict[str, Any]:
    """Return the settings in a client's JSON TEXT message; other text is logged and ignored."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        log.info("client text before the data (not JSON, ignored): %.200s", text)
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _next(messages: Iterator[Any], expected: str) -> Any:
    """Return the next message, or raise ProtocolError naming what was expected when the stream ended."""
    try:
        return next(messages)
    except StopIteration:
        raise ProtocolError(f"the stream closed before {expected}") from None


def _kind(message: Any) -> str:
    """Return how a message reads in an error."""
    return type(message).__name__


def data_messages(start: StreamStart, messages: Iterator[Any]) -> Iterator[Any]:
    """Yield the data messages (acquisitions, waveforms, images) after the start; later TEXT is logged.

    Parameters
    ----------
    start : The stream start, whose ``pending`` message comes first.
    messages : The remaining deserialized messages.

    Yields
    ------
    Data items in stream order.

    Raises
    ------
    ProtocolError
        For a second config or header in the middle of the data.
    """
    if start.pending is None:
        return
    for message in _chain_first(start.pending, messages):
        if isinstance(message, ConfigFile | ConfigText | ismrmrd.xsd.ismrmrdHeader):
            raise ProtocolError(f"unexpected {_kind(message)} message in the middle of the data")
        if isinstance(message, str):
            log.info("client text during the data (ignored): %.200s", message)
            continue
        yield message


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def read_messages(stream: BinaryIO) -> Iterator[Any]:
    """Yield every message of an MRD byte stream up to CLOSE, with protocol errors as ProtocolError.

    Parameters
    ----------
    stream : Binary input (socket file, stdin, file).

    Yields
    ------
    Config, header, text, acquisitions, waveforms, images.

    Raises
    ------
    ProtocolError
        For an unknown message id, a truncated message, or a stream that ends without CLOSE.
    """
    messages = MrdDeserializer(stream).deserialize()
    while True:
        try:
            message = next(messages)
        except StopIteration:
            return
        except EOFError as exc:
            raise ProtocolError(f"the stream ended in the middle of a message or without CLOSE ({exc})") from exc
        except ProtocolError:
            raise
        except ValueError as exc:
            raise ProtocolError(f"unreadable message: {exc}") from exc
        yield message


class ReplyWriter:
    """Writes the reply stream (images, acquisitions, waveforms, TEXT) with ismrmrd's serializer; thread-safe."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._serializer = ProtocolSerializer(stream)
        self._lock = threading.Lock()
        self.closed = False

    def send(self, item: Any) -> None:
        """Serialize one output item.

        Raises
        ------
        TypeError
            If the item is not something the protocol carries (a chain that ends without an output gadget).
        """
        if not isinstance(item, ismrmrd.Image | ismrmrd.Acquisition | ismrmrd.Waveform | str):
            raise TypeError(
                f"the chain's last gadget sent a {type(item).__name__}, which cannot go to the client; "
                "end the chain with a gadget that sends images"
            )
        with self._lock:
            self._serializer.serialize(item)
            if isinstance(item, ismrmrd.Image | str):  # results go out at once; raw data when the input pauses
                self._stream.flush()

    def text(self, message: str) -> None:
        """Send a TEXT message and flush it."""
        with self._lock:
            self._serializer.serialize(message)
            self._stream.flush()

    def flush(self) -> None:
        """Push buffered bytes to the client."""
        with self._lock:
            self._stream.flush()

    def close(self) -> None:
        """Send CLOSE and flush; safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._stream.write(int(ISMRMRDMessageID.CLOSE).to_bytes(2, "little"))
            self._stream.flush()
