"""An MRD client (the shape of ``gadgetron_ismrmrd_client``): send a stream, collect the reply until CLOSE.

Sending and receiving run concurrently, so a chain that answers while data still arrives never deadlocks.
"""

import contextlib
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import ismrmrd
import ismrmrd.xsd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

from gadgets.runtime.protocol import read_messages


@dataclass
class Reply:
    """What came back on a connection before CLOSE."""

    images: list[ismrmrd.Image] = field(default_factory=list)
    acquisitions: list[ismrmrd.Acquisition] = field(default_factory=list)
    waveforms: list[ismrmrd.Waveform] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """The TEXT messages that report an error."""
        return [t for t in self.texts if t.startswith("ERROR")]


def send_stream(
    host: str,
    port: int,
    header: ismrmrd.xsd.ismrmrdHeader,
    items: Iterable[Any],
    *,
    config_file: str | None = None,
    config_text: str | None = None,
    settings_json: str | None = None,
    timeout_s: float = 300.0,
) -> Reply:
    """Send config, header, optional JSON settings and the items, then CLOSE; return everything sent back.

    Parameters
    ----------
    host : Server address.
    port : Server port.
    header : The ISMRMRD header.
    items : Acquisitions, waveforms or images, in order.
    config_file : Shipped chain name (CONFIG_FILE); exactly one of this and ``config_text``.
    config_text : Chain XML (CONFIG_TEXT).
    settings_json : A JSON TEXT message to send between the header and the data.
    timeout_s : Socket timeout.

    Returns
    -------
    The reply.
    """
    if (config_file is None) == (config_text is None):
        raise ValueError("give exactly one of config_file and config_text")
    reply = Reply()
    with (
        socket.create_connection((host, port), timeout=timeout_s) as sock,
        sock.makefile("wb", buffering=1 << 20) as wfile,
        sock.makefile("rb", buffering=1 << 20) as rfile,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send() -> None:
            serializer = ProtocolSerializer(wfile)
            try:
                config = ConfigFile(config_file) if config_file is not None else ConfigText(str(config_text))
                serializer.serialize(config)
                serializer.serialize(header)
                if settings_json is not None:
                    serializer.serialize(settings_json)
                for item in items:
                    serializer.serialize(item)
                serializer.close()
            except OSError:  # the server may close early after an error; its reply says why
                with contextlib.suppress(OSError):
                    wfile.close()

        sender = threading.Thread(target=send, name="mrd-client-send", daemon=True)
        sender.start()
        for message in read_messages(cast(BinaryIO, rfile)):
            if isinstance(message, ismrmrd.Image):
                reply.images.append(message)
            elif isinstance(message, ismrmrd.Acquisition):
                reply.acquisitions.append(message)
            elif isinstance(message, ismrmrd.Waveform):
                reply.waveforms.append(message)
            elif isinstance(message, str):
                reply.texts.append(message)
        sender.join(timeout=timeout_s)
    return reply
