"""The MRD TCP server: one thread and one pipeline per connection; no bad stream stops it, no client holds it.

Every client is untrusted (anyone on the scanner network): the server caps the connections it serves at once,
times out a client that does not start its stream or falls silent, bounds every message before reading it
(``ServerLimits``), and stops a stream's work when its client resets the connection.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import io
import itertools
import logging
import os
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from gadgets.runtime.protocol import MessageLimits, ReplyWriter
from gadgets.runtime.session import SiteSettings, serve_stream

log = logging.getLogger(__name__)

DEFAULT_PORT = 9002
REFUSED_DRAIN_S = 2.0
"""Seconds a refused or failed connection's input is read and dropped so that its ERROR reaches the client."""


def _libc() -> ctypes.CDLL | None:
    """Return the C library, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def bound_allocator_arenas() -> None:
    """Cap glibc's allocation arenas at the number of cores (glibc's default: 8 per core).

    Every connection runs on new threads, and glibc lets threads grow arenas of their own that it rarely hands
    back: fuzzing 1,500 streams grew the resident set by 184 MiB with the default and by 7 MiB with the cap
    (bench/fuzz_server.py). A no-op where the C library is not glibc.
    """
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, os.cpu_count() or 1)


def return_freed_memory() -> None:
    """Give the memory a finished stream freed back to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    malloc_trim = getattr(_LIBC, "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server; each is a ``qmri serve`` option.

    Parameters
    ----------
    max_connections : Streams served at once; a client beyond them gets ERROR and CLOSE at once.
    start_timeout_s : Seconds a new connection has to send its config and header (s).
    idle_timeout_s : Seconds a client may stay silent between messages, or leave our replies unread, before the
        stream is ended with an ERROR (s); generous, as scans pause for breath-holds.
    max_message_mb : Largest readout, image, waveform or array message, in MiB; larger is refused unread.
    """

    max_connections: int = 8
    start_timeout_s: float = 30.0
    idle_timeout_s: float = 300.0
    max_message_mb: float = 64.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        for name in ("start_timeout_s", "idle_timeout_s", "max_message_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def message_limits(self) -> MessageLimits:
        """The per-message size limits."""
        return MessageLimits(max_data_bytes=int(self.max_message_mb * (1 << 20)))


class _SocketReader(io.RawIOBase):
    """Socket input with the server's timeouts that calls ``before_blocking_read`` (the reply's flush) on a pause.

    Replies are written through a buffer; flushing whenever no input is waiting sends them as soon as the scanner
    pauses, and costs one flush per burst instead of one per item at full rate. Until ``started`` is called every
    read must finish before the start deadline (a client that trickles bytes cannot hold the connection); after it,
    each read may wait ``idle_timeout_s``.
    """

    def __init__(self, sock: socket.socket, limits: ServerLimits) -> None:
        self._sock = sock
        self._limits = limits
        self._deadline: float | None = time.monotonic() + limits.start_timeout_s
        self.before_blocking_read: Callable[[], None] | None = None

    def started(self) -> None:
        """Relax the start deadline: config and header have arrived, from now on only the idle timeout applies."""
        self._deadline = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        ready = select.select([self._sock], [], [], 0)[0]
        if not ready and self.before_blocking_read is not None:
            self.before_blocking_read()
        if self._deadline is None:
            wait, what = self._limits.idle_timeout_s, f"no data from the client for {self._limits.idle_timeout_s:g} s"
        else:
            wait = self._deadline - time.monotonic()
            what = f"the client did not send its config and header within {self._limits.start_timeout_s:g} s"
        if wait <= 0 or not (ready or select.select([self._sock], [], [], wait)[0]):
            raise TimeoutError(what)
        return self._sock.recv_into(buffer)


class _Handler(socketserver.StreamRequestHandler):
    """Serves one client connection."""

    server: "MrdServer"
    wbufsize = 1 << 20  # socketserver's default (0) writes every small header piece as its own packet
    rbufsize = 1 << 20

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.settimeout(self.server.limits.idle_timeout_s)  # a client that stops reading our replies
        self.reader = _SocketReader(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self.reader, self.rbufsize)

    def handle(self) -> None:
        stream = f"client {self.client_address[0]}:{self.client_address[1]} #{next(self.server.counter)}"
        if not self.server.slots.acquire(blocking=False):
            self._refuse(stream)
            return
        try:
            log.info("%s: connected", stream)
            ok = serve_stream(
                cast(BinaryIO, self.rfile),
                cast(BinaryIO, self.wfile),
                stream=stream,
                site=self.server.site,
                on_started=self.reader.started,
                client_gone=self._client_reset,
            )
            if not ok:  # the client may still be sending: let the ERROR and CLOSE reach it before the socket closes
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_WR)
                    self._drain(REFUSED_DRAIN_S)
        finally:
            self.server.slots.release()
            return_freed_memory()
        with contextlib.suppress(OSError):  # wakes a gadget thread still blocked reading a failed stream
            self.connection.shutdown(socket.SHUT_RDWR)
        log.info("%s: closed", stream)

    def _refuse(self, stream: str) -> None:
        """Tell a client beyond the connection limit so (ERROR, CLOSE) without reading its stream."""
        limit = self.server.limits.max_connections
        log.warning("%s: refused, %d streams are being served (--max-connections %d)", stream, limit, limit)
        reply = ReplyWriter(cast(BinaryIO, self.wfile))
        with contextlib.suppress(OSError):  # a client gone already needs no answer
            reply.text(
                f"ERROR the server is busy: it serves at most {limit} streams at once (--max-connections); "
                "send the scan again when one has finished"
            )
            reply.close()
            self.connection.shutdown(socket.SHUT_WR)
            self._drain(REFUSED_DRAIN_S)

    def _drain(self, seconds: float) -> None:
        """Read and drop what the client sends for up to ``seconds`` or until it closes.

        Closing a socket with unread input makes the kernel send RST, which can destroy the ERROR the client has
        not read yet.
        """
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and select.select([self.connection], [], [], left)[0]:
            if not self.connection.recv(1 << 16):
                return

    def _client_reset(self) -> bool:
        """Return True when the client has reset the connection (RST); read nothing.

        Called once the stream's input has ended (CLOSE read). A clean end of the client's sending side (FIN) is not
        taken as gone: clients such as Gadgetron's shut their sending side and wait for the images.
        """
        try:
            if not select.select([self.connection], [], [], 0)[0]:  # recv would wait the socket's timeout first
                return False
            self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            return exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF)
        return False

    def finish(self) -> None:
        try:
            super().finish()
        except OSError as exc:  # the client left; serve_stream has logged it, socketserver would print a traceback
            log.debug("closing a connection whose client left: %s", exc)
            with contextlib.suppress(OSError):
                self.rfile.close()


class MrdServer(socketserver.ThreadingTCPServer):
    """A threaded MRD server; ``serve_forever`` until ``shutdown``.

    Parameters
    ----------
    host : Address to listen on (``127.0.0.1`` by default: only this machine; ``0.0.0.0`` for the network).
    port : Port; 0 picks a free one (see ``port``).
    site : The site's settings for every stream (output and journal folders, site chains).
    limits : What one client may cost the server.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        site: SiteSettings | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        site = site or SiteSettings()
        self.site = SiteSettings(
            output_dir=site.output_dir,
            journal_dir=site.journal_dir,
            site_chains=site.site_chains,
            message_limits=self.limits.message_limits,
        )
        bound_allocator_arenas()
        self.slots = threading.BoundedSemaphore(self.limits.max_connections)
        self.counter = itertools.count(1)
        self.internal_errors = 0
        """Connections whose handler raised (a bug: every stream's errors should reach its client as ERROR)."""
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a connection handler's unexpected exception with its traceback (socketserver prints it to stderr)."""
        self.internal_errors += 1
        log.exception("client %s: internal error, the connection was dropped", client_address)

    @property
    def journal_dir(self) -> Path | None:
        """Where every incoming stream is journaled, if anywhere."""
        return self.site.journal_dir

    @property
    def port(self) -> int:
        """The port listened on (useful when started on port 0)."""
        return int(self.server_address[1])

    def start_in_background(self) -> threading.Thread:
        """Serve from a daemon thread and return it (for tests and benchmarks)."""
        thread = threading.Thread(target=self.serve_forever, name="mrd-server", daemon=True)
        thread.start()
        return thread
