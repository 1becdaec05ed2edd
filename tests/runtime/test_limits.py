"""Bounded resources: declared sizes checked before allocation, a connection limit, start and idle timeouts, and a
stream's work stopped when its client resets the connection (issue 13)."""

import contextlib
import io
import resource
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.image import ImageHeader
from ismrmrd.serialization import ConfigFile, ConfigText
from ismrmrd.waveform import WaveformHeader

from gadgets.runtime.pipeline import Channel, item_nbytes
from gadgets.runtime.protocol import MessageLimits, MrdReader, ProtocolError, read_messages
from gadgets.runtime.server import MrdServer, ServerLimits
from gadgets.runtime.session import SiteSettings
from qmri_models.interrupt import Interrupted, check_interrupt, interruptible
from tests.conftest import make_raw, raw_header_and_items
from tests.runtime.test_server_protocol import serialize

TIMEOUT_S = 30.0
ACQUISITION, IMAGE, WAVEFORM, NDARRAY = 1008, 1022, 1026, 1030


def rss_mb() -> float:
    """This process's resident set in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def reply_of(port: int, payload: bytes, *, timeout_s: float = TIMEOUT_S) -> list[Any]:
    """Send ``payload`` and leave the connection open; return the reply up to the server's CLOSE."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock, sock.makefile("rb") as rfile:
        with contextlib.suppress(OSError):  # the server may stop reading early; its reply says why
            sock.sendall(payload)
        return list(read_messages(rfile))


@contextlib.contextmanager
def running(limits: ServerLimits | None = None) -> Iterator[MrdServer]:
    """A server with these limits, its files (t1_molli's DICOM) in a temporary folder; stopped afterwards."""
    with tempfile.TemporaryDirectory() as output:
        server = MrdServer("127.0.0.1", 0, site=SiteSettings(output_dir=Path(output)), limits=limits)
        server.start_in_background()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()


def handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def wait_for(condition: Any, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[ismrmrd.Acquisition]]:
    raw = make_raw(tmp_path_factory.mktemp("raw") / "molli.h5", contrast="molli", acceleration=4, n_slices=1)
    return raw_header_and_items(raw)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- sizes


def _acquisition_declaring(samples: int, coils: int) -> bytes:
    head = AcquisitionHeader()
    head.number_of_samples, head.active_channels, head.scan_counter = samples, coils, 7
    return struct.pack("<H", ACQUISITION) + bytes(head)  # the header alone: no data follows


def _image_declaring(size: int) -> bytes:
    head = ImageHeader()
    head.data_type, head.channels, head.matrix_size[:] = ismrmrd.DATATYPE_CXFLOAT, 64, (size, size, size)
    return struct.pack("<H", IMAGE) + bytes(head) + struct.pack("<Q", 0)


def _waveform_declaring(samples: int, channels: int) -> bytes:
    head = WaveformHeader()
    head.number_of_samples, head.channels = samples, channels
    return struct.pack("<H", WAVEFORM) + bytes(head)


def _ndarray_declaring(n: int) -> bytes:
    return struct.pack("<HHHHQQ", NDARRAY, 4, 1, 2, n, n)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(_acquisition_declaring(65535, 512), "declares 512 channels", id="readout-512-coils"),
        pytest.param(_acquisition_declaring(65535, 4), "over the limit of 1048576", id="readout-over-limit"),
        pytest.param(_image_declaring(2048), "declares 4398046511104 bytes of data", id="image-34GB"),
        pytest.param(_waveform_declaring(65535, 65535), "waveform 0 declares 17179344900 bytes", id="waveform-17GB"),
        pytest.param(_ndarray_declaring(1 << 40), "an array message declares", id="ndarray-huge"),
    ],
)
def test_a_huge_declaration_gets_error_and_close_without_allocating(scan: tuple, message: bytes, expected: str) -> None:
    header, items = scan
    with running(ServerLimits(max_message_mb=1.0)) as server:
        reply_of(server.port, serialize(ConfigFile("passthrough"), header, *items[:3]))  # warm up
        before = rss_mb()
        reply = reply_of(server.port, serialize(ConfigFile("passthrough"), header, *items[:3], close=False) + message)
        growth = rss_mb() - before
    assert isinstance(reply[-1], str)
    assert reply[-1].startswith("ERROR ")
    assert expected in reply[-1]
    assert len(reply) == 4  # the three readouts echoed, then the ERROR; CLOSE ended read_messages
    assert growth < 10, f"RSS grew by {growth:.1f} MiB"


def test_the_first_data_message_may_not_declare_34_gb(scan: tuple) -> None:
    """Today's 34 GB declaration as the first data message raised an uncaught MemoryError; now ERROR, CLOSE."""
    header, items = scan
    with running() as server:
        reply_of(server.port, serialize(ConfigFile("passthrough"), header, *items[:3]))  # warm up
        before = rss_mb()
        (error,) = reply_of(
            server.port, serialize(ConfigFile("passthrough"), header, close=False) + _image_declaring(2048)
        )
        assert rss_mb() - before < 10
    assert error.startswith("ERROR image 0 of series 0 declares")


def test_a_reader_reads_a_declared_payload_only_as_it_arrives() -> None:
    """A readout header that declares 64 MiB and sends 1 byte costs what arrived, not what was declared."""
    limits = MessageLimits(max_data_bytes=64 << 20, max_channels=64)
    payload = _acquisition_declaring(65535 // 2, 64) + b"x"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ProtocolError, match="ended in the middle of a message"):
        list(read_messages(MrdReader(io.BytesIO(payload), limits)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 10_000  # kB


def test_readouts_read_from_a_stream_are_writable(scan: tuple) -> None:
    """Gadgets may work on a readout's arrays in place (e.g. noise prewhitening), as on ismrmrd's own."""
    _, items = scan
    (acq,) = read_messages(io.BytesIO(serialize(items[0])))
    assert acq.data.flags.writeable
    assert acq.traj.flags.writeable
    np.testing.assert_array_equal(acq.data, items[0].data)


def test_the_header_narrows_the_channels_a_readout_may_declare(scan: tuple) -> None:
    header, items = scan
    channels = header.acquisitionSystemInformation.receiverChannels
    too_many = ismrmrd.Acquisition.from_array(np.zeros((channels + 1, 16), np.complex64))
    with running() as server:
        reply = reply_of(server.port, serialize(ConfigFile("passthrough"), header, items[0], too_many, close=False))
    assert reply[-1].startswith("ERROR input failed: ProtocolError: ")
    assert f"readout 0 declares {channels + 1} channels; this stream allows 1 to {channels}" in reply[-1]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda h: setattr(h, "encoding", []), "the ISMRMRD header has no <encoding>"),
        (lambda h: setattr(h.encoding[0].encodedSpace.matrixSize, "x", 65535), "has matrix size 65535 x"),
        (lambda h: setattr(h.encoding[0].reconSpace.fieldOfView_mm, "x", 0.0), "has field of view 0.0 x"),
        (lambda h: setattr(h.encoding[0].encodingLimits.set, "maximum", -1), "limit set has minimum 0"),
    ],
    ids=["no-encoding", "huge-matrix", "zero-fov", "bad-limit"],
)
def test_a_bad_header_is_refused_on_arrival(scan: tuple, edit: Any, expected: str) -> None:
    header, items = scan
    bad = ismrmrd.xsd.CreateFromDocument(header.toXML())
    edit(bad)
    with running() as server:
        (error,) = reply_of(server.port, serialize(ConfigFile("t1_molli"), bad, *items[:3]))
    assert error.startswith("ERROR ")
    assert expected in error


def test_a_slice_that_never_closes_gets_error_and_bounded_memory(scan: tuple) -> None:
    """A stream that never sets ACQ_LAST_IN_SLICE (it sent 203 MB and held 198 of them): the buffer's cap stops it.

    Slice 0's readouts are sent over and over, unflagged, until the server answers; the header promises 64 lines of
    8 phases, so the buffer holds at most 2 x 512 readouts (2 MB here) before the ERROR.
    """
    header, items = scan
    slice_readouts = [ismrmrd.Acquisition.from_bytes(a.to_bytes()) for a in items if a.idx.slice == 0]
    for acq in slice_readouts:
        acq.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        acq.clear_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    block = serialize(*slice_readouts, close=False)
    with running() as server:
        reply_of(server.port, serialize(ConfigFile("t1_molli"), header, *items))  # warm up
        before = rss_mb()
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(serialize(ConfigFile("t1_molli"), header, close=False))
            sent = 0

            def send_forever() -> None:
                nonlocal sent
                with contextlib.suppress(OSError):
                    while sent < 400 << 20:  # stops when the server closes, long before this
                        sock.sendall(block)
                        sent += len(block)

            sender = threading.Thread(target=send_forever, daemon=True)
            sender.start()
            with sock.makefile("rb") as rfile:
                reply = list(read_messages(rfile))
            sender.join(TIMEOUT_S)
        growth = rss_mb() - before
    (error,) = reply
    assert "more than the cap of 1024 readouts per slice" in error
    assert "raise slice_readout_margin" in error
    assert growth < 20, f"RSS grew by {growth:.1f} MiB while the client sent {sent / 2**20:.0f} MiB"


def test_a_header_value_that_is_no_number_is_refused(scan: tuple) -> None:
    """Found by bench/fuzz_server.py: xsdata kept ``22 .0`` as text, and the header check failed on it."""
    header, items = scan
    xml = header.toXML().replace(f"<x>{header.encoding[0].reconSpace.fieldOfView_mm.x}</x>", "<x>22 .0</x>", 1)
    assert "22 .0" in xml
    with running() as server:
        start = serialize(ConfigFile("t1_molli"), close=False) + struct.pack("<HI", 3, len(xml)) + xml.encode()
        (error,) = reply_of(server.port, start + serialize(*items[:3]))
        assert server.internal_errors == 0
    assert error == (
        "ERROR the ISMRMRD header does not parse: Failed to convert value for `fieldOfViewMm.x` "
        "`22 .0` is not a valid `float`"
    )


# ---------------------------------------------------------------------------------------------------- connections


def test_connections_beyond_the_limit_get_error_and_close(scan: tuple) -> None:
    header, items = scan
    with running(ServerLimits(max_connections=2)) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) for _ in range(2)]
        try:
            for sock in held:  # two streams open, mid-scan
                sock.sendall(serialize(ConfigFile("passthrough"), header, *items[:2], close=False))
            wait_for(lambda: handler_threads() >= 2)
            start = time.monotonic()
            (busy,) = reply_of(server.port, serialize(ConfigFile("passthrough"), header, *items[:2]))
            assert time.monotonic() - start < 5
            assert busy.startswith("ERROR the server is busy: it serves at most 2 streams at once")
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: handler_threads() == 0)
        reply = reply_of(server.port, serialize(ConfigFile("passthrough"), header, *items[:2]))
        assert [type(m) for m in reply] == [ismrmrd.Acquisition, ismrmrd.Acquisition]


def test_a_connection_that_sends_nothing_times_out() -> None:
    with running(ServerLimits(start_timeout_s=0.5)) as server:
        start = time.monotonic()
        (error,) = reply_of(server.port, b"")
        assert time.monotonic() - start < 3
        assert error == "ERROR the client did not send its config and header within 0.5 s; closing the connection"
        wait_for(lambda: handler_threads() == 0)


@pytest.mark.slow
def test_a_client_that_trickles_its_start_times_out(scan: tuple) -> None:
    header, _ = scan
    payload = serialize(ConfigFile("passthrough"), header, close=False)
    with running(ServerLimits(start_timeout_s=1.0)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
            start = time.monotonic()
            with contextlib.suppress(OSError):
                for byte in payload[:40]:  # one byte every 0.1 s: each read is quick, the start is not
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            with sock.makefile("rb") as rfile:
                (error,) = list(read_messages(rfile))
        assert "did not send its config and header within 1 s" in error
        assert time.monotonic() - start < 6


def test_a_client_silent_mid_stream_times_out(scan: tuple) -> None:
    header, items = scan
    with running(ServerLimits(idle_timeout_s=0.5)) as server:
        start = time.monotonic()
        reply = reply_of(server.port, serialize(ConfigFile("passthrough"), header, *items[:3], close=False))
        assert time.monotonic() - start < 5
        wait_for(lambda: handler_threads() == 0)
    assert [type(m) for m in reply[:3]] == [ismrmrd.Acquisition] * 3
    assert reply[-1] == "ERROR input failed: ProtocolError: no data from the client for 0.5 s; closing the connection"


# ---------------------------------------------------------------------------------------------------- client gone


SLOW_CHAIN = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <version>2</version>
  <stream>
    <gadget><name>Buffer</name><dll>qmri</dll><classname>AcquisitionBufferGadget</classname></gadget>
    <gadget>
      <name>Recon</name><dll>qmri</dll><classname>CartesianReconGadget</classname>
      <property name="cg_iterations" value="100"/>
    </gadget>
    <gadget><name>Images</name><dll>qmri</dll><classname>ImageSeriesGadget</classname></gadget>
  </stream>
</configuration>
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
def test_a_client_that_resets_mid_chain_leaves_no_cpu_use_a_second_later(tmp_path: Path) -> None:
    """100 CG-SENSE iterations per phase of four 128^2 slices (tens of seconds of work), then the client resets."""
    raw = make_raw(tmp_path / "big.h5", contrast="molli", matrix=128, n_coils=8, acceleration=4, n_slices=4)
    header, items = raw_header_and_items(raw)
    with running() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(serialize(ConfigText(SLOW_CHAIN), header, *items))
            busy_from = cpu_seconds()
            wait_for(lambda: cpu_seconds() - busy_from > 1.0)  # the chain is at work
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        time.sleep(1.0)
        idle_from = cpu_seconds()
        time.sleep(1.0)
        used = cpu_seconds() - idle_from
        wait_for(lambda: handler_threads() == 0, timeout_s=5)
    assert used < 0.2, f"{used:.2f} CPU seconds used in the second after the client had gone"


# ---------------------------------------------------------------------------------------------------- pieces


def test_a_channel_holds_a_bounded_number_of_bytes() -> None:
    cancelled = threading.Event()
    channel = Channel(64, cancelled, max_bytes=3 * 800)
    block = np.zeros(100, np.float64)  # 800 bytes
    for _ in range(3):
        channel.put(block)
    blocked = threading.Thread(target=channel.put, args=(block,), daemon=True)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a fourth 800-byte item fitted into 2400 bytes"
    items = iter(channel)
    next(items)
    blocked.join(TIMEOUT_S)
    assert not blocked.is_alive()
    for _ in range(3):
        next(items)
    channel.put(np.zeros(10_000))  # larger than the whole budget: it passes alone, once the channel is empty
    assert next(items).nbytes == 80_000


def test_item_bytes_count_arrays_of_readouts_images_and_dataclasses(scan: tuple) -> None:
    _, items = scan
    acq = items[0]
    assert item_nbytes(acq) == acq.data.nbytes + acq.traj.nbytes
    assert item_nbytes(ismrmrd.Image.from_array(np.zeros((4, 5), np.float32))) == 80
    assert item_nbytes("text") == 0


def test_interrupt_stops_only_inside_interruptible() -> None:
    check_interrupt()  # outside: never raises
    stop = threading.Event()
    with interruptible(stop):
        check_interrupt()
        stop.set()
        with pytest.raises(Interrupted):
            check_interrupt()
    check_interrupt()
