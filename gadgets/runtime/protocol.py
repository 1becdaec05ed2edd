"""The MRD streaming protocol as Gadgetron speaks it, on top of ismrmrd's types and serializer.

What ismrmrd's ``ProtocolDeserializer`` does not do and real clients need: config text, header and text messages
that are NUL-terminated (the length counts the NUL); a JSON TEXT message between the header and the data; every
declared size checked before anything is allocated, so a client cannot make the server allocate what it does not
send (:class:`MrdReader`); the header XML parsed without DTDs or entities; protocol errors as one exception type
with a message a client can act on.
"""

import ctypes
import json
import logging
import struct
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import ismrmrd
import ismrmrd.image
import ismrmrd.xsd
import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.image import ImageHeader
from ismrmrd.serialization import ConfigFile, ConfigText, ISMRMRDMessageID, ProtocolSerializer
from ismrmrd.waveform import WaveformHeader
from xsdata.exceptions import ConverterWarning

log = logging.getLogger(__name__)

warnings.filterwarnings("error", category=ConverterWarning)  # see parse_header

TEXT_LIMIT_BYTES = 4 << 20
"""Largest config text, header or TEXT message (4 MiB; a scanner's header is tens of kB)."""
MAX_DIMENSIONS = 8
"""Most dimensions an NDArray message may declare."""
_READ_CHUNK = 1 << 20
"""Bytes read at a time: memory grows with what arrives, never with what a length field declares."""


class ProtocolError(ValueError):
    """The byte stream does not follow the MRD protocol: says what was expected and what came."""


@dataclass(frozen=True)
class MessageLimits:
    """What one message may declare, checked before anything is allocated.

    Parameters
    ----------
    max_data_bytes : Largest payload of one readout, image, waveform or array message (bytes).
    max_channels : Most channels a readout may declare (the header's ``receiverChannels`` once it has arrived).
    """

    max_data_bytes: int = 64 << 20
    max_channels: int = 1024

    def for_header(self, header: ismrmrd.xsd.ismrmrdHeader) -> "MessageLimits":
        """Return these limits narrowed by what the stream's header says (its receiver channels)."""
        system = header.acquisitionSystemInformation
        channels = getattr(system, "receiverChannels", None) if system is not None else None
        if channels is None or not 0 < int(channels) <= self.max_channels:
            return self
        return MessageLimits(max_data_bytes=self.max_data_bytes, max_channels=int(channels))


class MrdReader:
    """Reads MRD messages from a byte stream, every declared size checked against :class:`MessageLimits` first.

    ismrmrd's ``ProtocolDeserializer`` allocates what a length field declares (an image or waveform header builds
    its zeroed array before a byte of data arrives), so a 340-byte readout header could cost hundreds of MB. Here
    each message's sizes are checked before any allocation, payloads are read in chunks as they arrive, and the
    objects are built with ismrmrd's own types. Config, header and TEXT strings may be NUL-terminated (real clients
    send them so; the length counts the NUL).

    Parameters
    ----------
    stream : Binary input (socket file, stdin, file).
    limits : Size limits; :meth:`expect` narrows them once the header is known.
    """

    def __init__(self, stream: BinaryIO, limits: MessageLimits | None = None) -> None:
        self._stream = stream
        self.limits = limits or MessageLimits()

    def expect(self, header: ismrmrd.xsd.ismrmrdHeader) -> None:
        """Narrow the limits by the stream's header (called once it has arrived)."""
        self.limits = self.limits.for_header(header)

    def messages(self) -> Iterator[Any]:
        """Yield every message up to CLOSE.

        Raises
        ------
        ProtocolError
            For an unknown message id, a size over the limits or a malformed message.
        EOFError
            When the stream ends inside a message or before CLOSE.
        """
        readers = {
            ISMRMRDMessageID.CONFIG_FILE: self._config_file,
            ISMRMRDMessageID.CONFIG_TEXT: lambda: ConfigText(self._text("CONFIG_TEXT")),
            ISMRMRDMessageID.HEADER: lambda: parse_header(self._text("HEADER")),
            ISMRMRDMessageID.TEXT: lambda: self._text("TEXT"),
            ISMRMRDMessageID.ACQUISITION: self._acquisition,
            ISMRMRDMessageID.IMAGE: self._image,
            ISMRMRDMessageID.WAVEFORM: self._waveform,
            ISMRMRDMessageID.NDARRAY: self._ndarray,
        }
        while True:
            (message_id,) = struct.unpack("<H", self._read(2))
            if message_id == ISMRMRDMessageID.CLOSE:
                return
            reader = readers.get(message_id)
            if reader is None:
                raise ProtocolError(f"unknown message id {message_id}; the stream is not MRD or is corrupt")
            yield reader()

    def _read(self, n: int) -> bytearray:
        """Return exactly ``n`` bytes (already checked against the limits) in a new writable buffer; EOFError if short.

        Payloads up to one chunk are read into a buffer of their size; larger ones grow chunk by chunk as they arrive.
        """
        if n <= _READ_CHUNK:
            buffer = bytearray(n)
            view = memoryview(buffer)
            got = 0
            while got < n:
                count = self._stream.readinto(view[got:])  # type: ignore[attr-defined]
                if not count:
                    raise EOFError(f"the stream ended {n - got} bytes short inside a message")
                got += count
            return buffer
        buffer = bytearray()
        while len(buffer) < n:
            part = self._stream.read(min(n - len(buffer), _READ_CHUNK))
            if not part:
                raise EOFError(f"the stream ended {n - len(buffer)} bytes short inside a message")
            buffer += part
        return buffer

    def _check(self, what: str, n_bytes: int) -> None:
        """Raise ProtocolError when a declared payload is over the data limit."""
        if n_bytes > self.limits.max_data_bytes:
            raise ProtocolError(
                f"{what} declares {n_bytes} bytes of data, over the limit of {self.limits.max_data_bytes} "
                "(the server's --max-message-mb); refused before reading it"
            )

    def _data(self, what: str, n_bytes: int) -> bytearray:
        """Return a payload of ``n_bytes``, refused before reading when over the data limit."""
        self._check(what, n_bytes)
        return self._read(n_bytes)

    def _text(self, what: str) -> str:
        (length,) = struct.unpack("<I", self._read(4))
        if length > TEXT_LIMIT_BYTES:
            raise ProtocolError(f"a {what} message declares {length} bytes, over the limit of {TEXT_LIMIT_BYTES}")
        return _utf8(self._read(length), what).rstrip("\x00")

    def _config_file(self) -> ConfigFile:
        return ConfigFile(_utf8(self._read(_CONFIG_FILE_BYTES).split(b"\x00", 1)[0], "CONFIG_FILE").strip())

    def _acquisition(self) -> ismrmrd.Acquisition:
        head = AcquisitionHeader.from_buffer_copy(self._read(_ACQUISITION_HEADER_BYTES))
        n_samples, n_coils, n_dims = head.number_of_samples, head.active_channels, head.trajectory_dimensions
        if not 0 < n_coils <= self.limits.max_channels:
            raise ProtocolError(
                f"readout {head.scan_counter} declares {n_coils} channels; this stream allows 1 to "
                f"{self.limits.max_channels} (the header's receiverChannels)"
            )
        if n_dims > 3:
            raise ProtocolError(f"readout {head.scan_counter} declares a {n_dims}-D trajectory (ISMRMRD: 2-D, 3-D)")
        what = f"readout {head.scan_counter}"
        traj = np.frombuffer(self._data(what, n_samples * n_dims * 4), np.float32)
        data = np.frombuffer(self._data(what, n_samples * n_coils * 8), np.complex64)
        return ismrmrd.Acquisition(head, data.reshape(n_coils, n_samples), traj.reshape(n_samples, n_dims))

    def _image(self) -> ismrmrd.Image:
        head_bytes = self._read(_IMAGE_HEADER_BYTES)
        head = ImageHeader.from_buffer_copy(head_bytes)
        dtype = _IMAGE_DTYPES.get(head.data_type)
        if dtype is None:
            raise ProtocolError(f"image {head.image_index} has an unknown data type {head.data_type}")
        (n_attribute,) = struct.unpack("<Q", self._read(8))
        if n_attribute > TEXT_LIMIT_BYTES:
            raise ProtocolError(
                f"image {head.image_index} declares {n_attribute} bytes of meta (limit {TEXT_LIMIT_BYTES})"
            )
        what = f"image {head.image_index} of series {head.image_series_index}"
        n_bytes = int(np.prod([int(v) for v in head.matrix_size], dtype=object)) * int(head.channels) * dtype.itemsize
        self._check(what, n_bytes)  # before ismrmrd.Image allocates the declared array
        attributes = _utf8(self._read(n_attribute), "image meta").rstrip("\x00")
        data = self._read(n_bytes)
        image = ismrmrd.Image(head_bytes, attributes)
        image.data.ravel()[:] = np.frombuffer(data, dtype=dtype)
        return image

    def _waveform(self) -> ismrmrd.Waveform:
        head_bytes = self._read(_WAVEFORM_HEADER_BYTES)
        head = WaveformHeader.from_buffer_copy(head_bytes)
        n_bytes = int(head.channels) * int(head.number_of_samples) * 4
        data = self._data(f"waveform {head.scan_counter}", n_bytes)  # before ismrmrd.Waveform allocates it
        waveform = ismrmrd.Waveform(head_bytes)
        waveform.data.ravel()[:] = np.frombuffer(data, dtype=np.uint32)
        return waveform

    def _ndarray(self) -> np.ndarray:
        data_type, _version, n_dims = struct.unpack("<HHH", self._read(6))
        dtype = _IMAGE_DTYPES.get(data_type)
        if dtype is None or n_dims > MAX_DIMENSIONS:
            raise ProtocolError(f"an array message declares data type {data_type} and {n_dims} dimensions")
        dims = struct.unpack(f"<{n_dims}Q", self._read(8 * n_dims))
        n_bytes = int(np.prod([int(d) for d in dims], dtype=object)) * dtype.itemsize
        return np.frombuffer(self._data("an array message", n_bytes), dtype=dtype).reshape(dims)


def _utf8(data: bytes | bytearray, what: str) -> str:
    """Return ``data`` decoded as UTF-8, or raise ProtocolError naming the message."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"the {what} message is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


_CONFIG_FILE_BYTES = 1024
_ACQUISITION_HEADER_BYTES = ctypes.sizeof(AcquisitionHeader)
_IMAGE_HEADER_BYTES = ctypes.sizeof(ImageHeader)
_WAVEFORM_HEADER_BYTES = ctypes.sizeof(WaveformHeader)
_IMAGE_DTYPES: dict[int, np.dtype] = {k: np.dtype(v) for k, v in ismrmrd.image.dtype_mapping.items()}


def parse_header(text: str) -> ismrmrd.xsd.ismrmrdHeader:
    """Return the parsed ISMRMRD header, or raise ProtocolError saying why it does not parse.

    A value that does not fit its type (``<x>22 .0</x>`` for a number) is an error, not a warning: xsdata would keep
    it as text, and a gadget would fail on it later.

    Parameters
    ----------
    text : Header XML, possibly NUL-terminated.

    Returns
    -------
    The header.
    """
    document = text.rstrip("\x00").encode()
    try:
        defused_fromstring(document, forbid_dtd=True)  # no DTDs, entities or external references reach xsdata
        return ismrmrd.xsd.CreateFromDocument(document)
    except (ET.ParseError, DefusedXmlException, ConverterWarning, ValueError, TypeError) as exc:
        raise ProtocolError(f"the ISMRMRD header does not parse: {' '.join(str(exc).split())[:300]}") from exc


@dataclass
class StreamStart:
    """What a client sends before the data: which chain, the header, and optional JSON settings."""

    config_file: str | None
    config_text: str | None
    header: ismrmrd.xsd.ismrmrdHeader
    user_settings: dict[str, Any] = field(default_factory=dict)
    pending: Any = None
    """The first data message, read while looking for optional JSON text (None if the stream ended)."""


def read_stream_start(
    messages: Iterator[Any],
    *,
    require_config: bool = True,
    on_config: Callable[[str | None, str | None], None] | None = None,
    on_header: Callable[[ismrmrd.xsd.ismrmrdHeader], None] | None = None,
) -> StreamStart:
    """Return the config, header and optional JSON settings at the head of a stream.

    Parameters
    ----------
    messages : The deserialized messages (from :func:`read_messages`).
    require_config : Whether the stream must open with a config message (stream mode with ``--chain`` need not).
    on_config : Called with ``(config_file, config_text)`` as soon as the config message is read, before the header:
        a chain the server refuses is refused before any more of the stream is read.
    on_header : Called with the header as soon as it is read, before the data (validation, limits, timeouts).

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
        config_file, config_text, header = None, None, first
    else:
        raise ProtocolError(f"expected a CONFIG_FILE or CONFIG_TEXT message first, got {_kind(first)}")
    if config_file is not None or config_text is not None:
        if on_config is not None:
            on_config(config_file, config_text)
        header = _next(messages, "the ISMRMRD HEADER message")
        if not isinstance(header, ismrmrd.xsd.ismrmrdHeader):
            raise ProtocolError(f"expected the ISMRMRD HEADER message after the config, got {_kind(header)}")
    if on_header is not None:
        on_header(header)
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


def read_messages(stream: BinaryIO | MrdReader) -> Iterator[Any]:
    """Yield every message of an MRD byte stream up to CLOSE, with protocol errors as ProtocolError.

    Parameters
    ----------
    stream : Binary input (socket file, stdin, file), or a reader with its limits.

    Yields
    ------
    Config, header, text, acquisitions, waveforms, images, arrays.

    Raises
    ------
    ProtocolError
        For an unknown message id, a size over the limits, a truncated message, a stream that ends without CLOSE,
        or a client silent for longer than the server's timeout.
    """
    reader = stream if isinstance(stream, MrdReader) else MrdReader(stream)
    messages = reader.messages()
    while True:
        try:
            message = next(messages)
        except StopIteration:
            return
        except EOFError as exc:
            raise ProtocolError(f"the stream ended in the middle of a message or without CLOSE ({exc})") from exc
        except TimeoutError as exc:
            raise ProtocolError(f"{exc}; closing the connection") from exc
        except ProtocolError:
            raise
        except (ValueError, TypeError) as exc:
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
