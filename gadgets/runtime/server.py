"""The MRD TCP server: one thread and one pipeline per connection; no bad stream stops it."""

import contextlib
import io
import itertools
import logging
import select
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from gadgets.runtime.session import serve_stream

log = logging.getLogger(__name__)

DEFAULT_PORT = 9002


class _PauseAwareSocketReader(io.RawIOBase):
    """Socket input that calls ``before_blocking_read`` (the reply's flush) when the client has paused.

    Replies are written through a buffer; flushing whenever no input is waiting sends them as soon as the scanner
    pauses, and costs one flush per burst instead of one per item at full rate.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.before_blocking_read: Callable[[], None] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.before_blocking_read is not None and not select.select([self._sock], [], [], 0)[0]:
            self.before_blocking_read()
        return self._sock.recv_into(buffer)


class _Handler(socketserver.StreamRequestHandler):
    """Serves one client connection."""

    server: "MrdServer"
    wbufsize = 1 << 20  # socketserver's default (0) writes every small header piece as its own packet
    rbufsize = 1 << 20

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BufferedReader(_PauseAwareSocketReader(self.connection), self.rbufsize)

    def handle(self) -> None:
        stream = f"client {self.client_address[0]}:{self.client_address[1]} #{next(self.server.counter)}"
        log.info("%s: connected", stream)
        rfile, wfile = cast(BinaryIO, self.rfile), cast(BinaryIO, self.wfile)
        serve_stream(
            rfile, wfile, stream=stream, journal_dir=self.server.journal_dir, output_dir=self.server.output_dir
        )
        with contextlib.suppress(OSError):  # wakes a gadget thread still blocked reading a failed stream
            self.connection.shutdown(socket.SHUT_RDWR)
        log.info("%s: closed", stream)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError as exc:  # the client left; serve_stream has logged it, socketserver would print a traceback
            log.debug("closing a connection whose client left: %s", exc)
            with contextlib.suppress(OSError):
                self.rfile.close()


class MrdServer(socketserver.ThreadingTCPServer):
    """A threaded MRD server; ``serve_forever`` until ``shutdown``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        journal_dir: Path | None = None,
        output_dir: Path | None = None,
    ) -> None:
        self.journal_dir = journal_dir
        self.output_dir = output_dir
        self.counter = itertools.count(1)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        """The port listened on (useful when started on port 0)."""
        return int(self.server_address[1])

    def start_in_background(self) -> threading.Thread:
        """Serve from a daemon thread and return it (for tests and benchmarks)."""
        thread = threading.Thread(target=self.serve_forever, name="mrd-server", daemon=True)
        thread.start()
        return thread
