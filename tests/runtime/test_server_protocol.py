"""The MRD server over real sockets: config by name and by text, NUL-terminated strings, JSON text, concurrent
clients, bad streams (each followed by a good client on the same server), gadget failures and the journal."""

import contextlib
import gc
import io
import random
import socket
import struct
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

from gadgets.runtime.protocol import read_messages
from gadgets.runtime.server import MrdServer
from gadgets.runtime.session import SiteSettings
from tests.conftest import raw_header_and_items

TIMEOUT_S = 30.0
CHAINS_DIR = Path(__file__).resolve().parents[2] / "chains"
CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
IDLE_WAIT_S = 3.0

# Buffer phases by idx.set, recon each slice when its ACQ_LAST_IN_SLICE readout arrives.
GAP_CHAIN = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <version>2</version>
  <stream>
    <gadget>
      <name>Buffer</name><dll>qmri</dll><classname>AcquisitionBufferGadget</classname>
      <property name="phase_dimension" value="set"/>
      <property name="trigger" value="last_in_slice"/>
    </gadget>
    <gadget>
      <name>Recon</name><dll>qmri</dll><classname>CartesianReconGadget</classname>
      <property name="method" value="zero_filled"/>
      <property name="coil_combine" value="sos"/>
    </gadget>
    <gadget>
      <name>Images</name><dll>qmri</dll><classname>ImageSeriesGadget</classname>
    </gadget>
  </stream>
</configuration>
"""


# ---------------------------------------------------------------------------------------------------- helpers


def serialize(*messages: Any, close: bool = True) -> bytes:
    """Return the bytes of ``messages`` as ismrmrd's serializer writes them, ending with CLOSE unless told not to."""
    with io.BytesIO() as buffer:
        serializer = ProtocolSerializer(buffer)
        for message in messages:
            serializer.serialize(message)
        if close:
            serializer.close()
        return buffer.getvalue()


def length_frame(message_id: int, text: str, *, nul: bool = False) -> bytes:
    """Return a hand-built length-prefixed frame (CONFIG_TEXT, HEADER, TEXT), NUL-terminated if asked."""
    data = text.encode() + (b"\x00" if nul else b"")
    return struct.pack("<HI", message_id, len(data)) + data


def close_frame() -> bytes:
    return struct.pack("<H", CLOSE)


def _send(sock: socket.socket, payload: bytes, barrier: threading.Barrier | None) -> None:
    with contextlib.suppress(OSError):  # the server may close early after an error; its reply says why
        if barrier is not None:
            barrier.wait(TIMEOUT_S)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)


def exchange(port: int, payload: bytes, *, barrier: threading.Barrier | None = None) -> list[Any]:
    """Send ``payload`` (from a thread, then shut the write side) and return the reply's messages up to CLOSE.

    ``read_messages`` returns only on CLOSE: a reply that ends otherwise raises ProtocolError here.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock, sock.makefile("rb") as rfile:
        sender = threading.Thread(target=_send, args=(sock, payload, barrier), daemon=True)
        sender.start()
        try:
            return list(read_messages(rfile))
        finally:
            sender.join(TIMEOUT_S)


def acquisitions(reply: list[Any]) -> list[ismrmrd.Acquisition]:
    return [m for m in reply if isinstance(m, ismrmrd.Acquisition)]


def texts(reply: list[Any]) -> list[str]:
    return [m for m in reply if isinstance(m, str)]


def errors(reply: list[Any]) -> list[str]:
    return [t for t in texts(reply) if t.startswith("ERROR")]


def assert_same_acquisitions(got: list[ismrmrd.Acquisition], sent: list[ismrmrd.Acquisition]) -> None:
    assert len(got) == len(sent)
    for a, b in zip(got, sent, strict=True):
        assert a.scan_counter == b.scan_counter
        assert bytes(a.getHead()) == bytes(b.getHead())
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.traj, b.traj)


def relabel(acq: ismrmrd.Acquisition, offset: int) -> ismrmrd.Acquisition:
    """Return a copy of ``acq`` with scan_counter and data shifted, so it cannot be mistaken for the original."""
    copy = ismrmrd.Acquisition.from_bytes(acq.to_bytes())
    copy.scan_counter = acq.scan_counter + offset
    copy.data[:] = acq.data + offset
    return copy


def assert_passthrough_works(port: int, header: Any, items: list[ismrmrd.Acquisition]) -> None:
    """A good client on the same server gets its readouts back and no error."""
    reply = exchange(port, serialize(ConfigFile("passthrough"), header, *items))
    assert texts(reply) == []
    assert_same_acquisitions(acquisitions(reply), items)


def journal_files(server: MrdServer) -> list[Path]:
    assert server.journal_dir is not None
    return sorted(Path(server.journal_dir).glob("*.h5"))


def read_journal(path: Path) -> list[ismrmrd.Acquisition]:
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dataset:
        return [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]


@pytest.fixture(scope="module")
def scan(molli_raw: Path) -> tuple[Any, list[ismrmrd.Acquisition]]:
    header, items = raw_header_and_items(molli_raw)
    assert all(isinstance(i, ismrmrd.Acquisition) for i in items)
    return header, items  # type: ignore[return-value]


@pytest.fixture
def few(scan: tuple[Any, list[ismrmrd.Acquisition]]) -> list[ismrmrd.Acquisition]:
    """A handful of readouts for the good client that follows a bad one."""
    return scan[1][:12]


# ---------------------------------------------------------------------------------------------------- 1. config


@pytest.mark.parametrize(
    "config",
    [ConfigFile("passthrough"), ConfigFile("passthrough.xml"), "text"],
    ids=["config-file-name", "config-file-xml-name", "config-text"],
)
def test_config_file_and_text_echo_every_acquisition(server: MrdServer, scan: tuple, config: Any) -> None:
    header, items = scan
    if config == "text":
        config = ConfigText((CHAINS_DIR / "passthrough.xml").read_text())
    reply = exchange(server.port, serialize(config, header, *items))
    assert texts(reply) == []
    assert len(reply) == len(items)
    assert sum(not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in items) == 256  # 2 slices, 8 phases
    assert_same_acquisitions(acquisitions(reply), items)


# ---------------------------------------------------------------------------------------------------- 2. NUL


def test_nul_terminated_config_header_and_text_are_accepted(server: MrdServer, scan: tuple) -> None:
    header, items = scan
    chain_xml = (CHAINS_DIR / "passthrough.xml").read_text()
    data = serialize(*items[:20])  # the readouts and the CLOSE

    def stream(*, nul: bool) -> bytes:
        return (
            length_frame(CONFIG_TEXT, chain_xml, nul=nul)
            + length_frame(HEADER, header.toXML(), nul=nul)
            + length_frame(TEXT, '{"customconfig": "x"}', nul=nul)
            + data
        )

    plain, terminated = exchange(server.port, stream(nul=False)), exchange(server.port, stream(nul=True))
    assert texts(plain) == texts(terminated) == []
    assert_same_acquisitions(acquisitions(plain), items[:20])
    assert_same_acquisitions(acquisitions(terminated), items[:20])


# ---------------------------------------------------------------------------------------------------- 3. TEXT


@pytest.mark.parametrize(
    "text", ['{"customconfig": "x"}', "[1, 2]", "not json at all", ""], ids=["json", "json-list", "not-json", "empty"]
)
def test_text_between_header_and_data_is_accepted(server: MrdServer, scan: tuple, text: str) -> None:
    header, items = scan
    reply = exchange(server.port, serialize(ConfigFile("passthrough"), header, text, *items[:20]))
    assert texts(reply) == []
    assert_same_acquisitions(acquisitions(reply), items[:20])


def test_text_in_the_middle_of_the_data_is_ignored(server: MrdServer, scan: tuple) -> None:
    header, items = scan
    reply = exchange(server.port, serialize(ConfigFile("passthrough"), header, *items[:5], "hello", *items[5:10]))
    assert texts(reply) == []
    assert_same_acquisitions(acquisitions(reply), items[:10])


# ---------------------------------------------------------------------------------------------------- 4. concurrency


def test_concurrent_clients_each_get_their_own_data(server: MrdServer, scan: tuple) -> None:
    header, items = scan
    sent = {offset: [relabel(a, offset) for a in items] for offset in (0, 100_000)}
    replies: dict[int, list[Any]] = {}
    barrier = threading.Barrier(2)

    def client(offset: int) -> None:
        payload = serialize(ConfigFile("passthrough"), header, *sent[offset])
        replies[offset] = exchange(server.port, payload, barrier=barrier)

    threads = [threading.Thread(target=client, args=(offset,)) for offset in sent]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert sorted(replies) == sorted(sent)
    for offset, reply in replies.items():
        assert texts(reply) == []
        assert_same_acquisitions(acquisitions(reply), sent[offset])


def test_a_client_mid_stream_does_not_block_another(server: MrdServer, scan: tuple, few: list) -> None:
    header, items = scan
    start = serialize(ConfigFile("passthrough"), header, *items[:5], close=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock, sock.makefile("rb") as rfile:
        sock.sendall(start)
        echoed = read_messages(rfile)
        first = [next(echoed) for _ in range(5)]  # the first client's stream is open and being served
        assert_same_acquisitions(first, items[:5])
        assert_passthrough_works(server.port, header, few)
        sock.sendall(serialize(*items[5:10]))
        assert_same_acquisitions(list(echoed), items[5:10])


# ---------------------------------------------------------------------------------------------------- 5. bad streams


def _garbage(header: Any, items: list) -> bytes:
    return random.Random(0).randbytes(4096)  # noqa: S311 - fixed garbage, not crypto


def _unknown_id(header: Any, items: list) -> bytes:
    return serialize(ConfigFile("passthrough"), header, close=False) + struct.pack("<H", 999) + b"\x00" * 64


def _truncated(header: Any, items: list) -> bytes:
    acquisition = serialize(items[0], close=False)
    return serialize(ConfigFile("passthrough"), header, close=False) + acquisition[: len(acquisition) // 2]


def _broken_header(header: Any, items: list) -> bytes:
    return serialize(ConfigFile("passthrough"), close=False) + length_frame(HEADER, "<ismrmrdHeader>broken")


def _huge_length(header: Any, items: list) -> bytes:
    return serialize(ConfigFile("passthrough"), close=False) + struct.pack("<HI", CONFIG_TEXT, 0xFFFFFFFF)


def _no_close(header: Any, items: list) -> bytes:
    return serialize(ConfigFile("passthrough"), header, *items[:3], close=False)


def _unknown_chain(header: Any, items: list) -> bytes:
    return serialize(ConfigFile("no_such_chain"), header, *items[:3])


def _bad_chain_text(header: Any, items: list) -> bytes:
    return serialize(ConfigText("<configuration><version>2</version"), header, *items[:3])


def _header_first(header: Any, items: list) -> bytes:
    return serialize(header, *items[:3])


def _invalid_utf8_text(header: Any, items: list) -> bytes:
    bad = b"\xff\xfe"
    head = serialize(ConfigFile("passthrough"), header, close=False)
    return head + struct.pack("<HI", TEXT, len(bad)) + bad + serialize(*items[:3])


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(_garbage, ("ERROR unknown message id 1997; the stream is not MRD",), id="garbage"),
        pytest.param(_unknown_id, ("ERROR unknown message id 999;",), id="unknown-id"),
        pytest.param(
            _truncated,
            ("ERROR unreadable message", "ERROR the stream ended in the middle of a message"),
            id="truncated-acquisition",
        ),
        pytest.param(_broken_header, ("ERROR the ISMRMRD header does not parse",), id="broken-header"),
        pytest.param(
            _huge_length, ("ERROR a CONFIG_TEXT message declares 4294967295 bytes, over the limit",), id="4GB-length"
        ),
        pytest.param(
            _no_close,
            ("ERROR input failed: ProtocolError: the stream ended in the middle of a message or without CLOSE",),
            id="no-close",
        ),
        pytest.param(_unknown_chain, ("ERROR no chain 'no_such_chain'",), id="unknown-chain"),
        pytest.param(_bad_chain_text, ("ERROR config text: malformed XML",), id="malformed-chain-xml"),
        pytest.param(
            _header_first,
            ("ERROR expected a CONFIG_FILE or CONFIG_TEXT message first, got ismrmrdHeader",),
            id="header-before-config",
        ),
        pytest.param(_invalid_utf8_text, ("ERROR the TEXT message is not UTF-8 text",), id="invalid-utf8-text"),
    ],
)
def test_bad_stream_gets_error_then_close_and_server_survives(
    server: MrdServer, scan: tuple, few: list, build: Any, expected: tuple[str, ...]
) -> None:
    header, items = scan
    reply = exchange(server.port, build(header, items))  # returns only if the reply ends with CLOSE
    assert len(errors(reply)) == 1, reply
    assert reply[-1] is errors(reply)[0], "the ERROR is the last message before CLOSE"
    assert reply[-1].startswith(expected), reply[-1]
    assert_passthrough_works(server.port, header, few)


def test_header_error_says_header_and_chain_error_names_the_chain(server: MrdServer, scan: tuple) -> None:
    header, items = scan
    (header_error,) = errors(exchange(server.port, _broken_header(header, items)))
    assert "header" in header_error.lower()
    (chain_error,) = errors(exchange(server.port, _unknown_chain(header, items)))
    assert "no_such_chain" in chain_error
    assert "passthrough" in chain_error  # lists the shipped chains


def wait_for_handlers_to_end() -> None:
    """Wait until every server connection thread (socketserver's process_request_thread) has returned."""
    deadline = time.monotonic() + TIMEOUT_S
    while any("process_request_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a server connection thread is still running"
        time.sleep(0.02)


@pytest.mark.parametrize("abort", ["close", "reset"])
def test_client_gone_mid_stream_then_good_client(server: MrdServer, scan: tuple, few: list, abort: str) -> None:
    header, items = scan
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        if abort == "reset":  # close sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(serialize(ConfigFile("passthrough"), header, *items[:100], close=False))
    assert_passthrough_works(server.port, header, few)
    # The server must have closed the gone client's socket itself, not left it to the garbage collector
    # (which warns at a random later moment and, with filterwarnings=error, fails whichever test runs then).
    wait_for_handlers_to_end()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == [], "the server left the gone client's socket open"


# ---------------------------------------------------------------------------------------------------- 6. CLOSE


@pytest.mark.parametrize("config", ["passthrough", "cartesian_multiphase"])
def test_stream_without_data_gets_close_and_no_error(server: MrdServer, scan: tuple, config: str) -> None:
    header, _ = scan
    assert exchange(server.port, serialize(ConfigFile(config), header)) == []


def test_stream_of_only_close_gets_error_and_close(server: MrdServer) -> None:
    reply = exchange(server.port, close_frame())
    assert errors(reply) == ["ERROR the stream closed before a CONFIG_FILE or CONFIG_TEXT message"]


# ---------------------------------------------------------------------------------------------------- 7. gadget errors


def _phase_gap(items: list[ismrmrd.Acquisition]) -> tuple[list[ismrmrd.Acquisition], int]:
    """Return the scan without slice 0's set 1, and how many readouts come up to slice 0's last one."""
    sent = [a for a in items if not (a.idx.slice == 0 and a.idx.set == 1)]
    last = next(i for i, a in enumerate(sent) if a.idx.slice == 0 and a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE))
    assert {a.idx.slice for a in sent[last + 1 :]} == {1}
    return sent, last + 1


def test_gap_chain_reconstructs_complete_data(server: MrdServer, scan: tuple) -> None:
    """Control for the failure below: the same chain with every phase present returns 8 images per slice."""
    header, items = scan
    reply = exchange(server.port, serialize(ConfigText(GAP_CHAIN), header, *items))
    assert texts(reply) == []
    images = [m for m in reply if isinstance(m, ismrmrd.Image)]
    assert len(images) == len(reply) == 16
    assert sorted((im.slice, im.set) for im in images) == [(s, p) for s in range(2) for p in range(8)]


def test_gadget_error_names_gadget_and_reason_then_good_client(server: MrdServer, scan: tuple, few: list) -> None:
    header, items = scan
    sent, _ = _phase_gap(items)
    reply = exchange(server.port, serialize(ConfigText(GAP_CHAIN), header, *sent))
    (error,) = errors(reply)
    assert reply[-1] == error
    assert error.startswith("ERROR gadget 'Buffer' (AcquisitionBufferGadget) failed: ValueError: ")
    assert "slice 0: no readouts for phases [1] in 'set'" in error
    assert [m for m in reply if isinstance(m, ismrmrd.Image)] == []  # slice 0 failed first; nothing after it
    assert_passthrough_works(server.port, header, few)


def test_gadget_error_reaches_a_client_that_waits(server: MrdServer, scan: tuple) -> None:
    """The failing gadget is not the one reading the socket; the client sent slice 0 and waits for its result.

    The server knows the stream failed as soon as slice 0 is buffered: the ERROR must not wait for more input.
    """
    header, items = scan
    sent, before_failure = _phase_gap(items)
    reader = "<gadget><name>First</name><dll>qmri</dll><classname>PassThroughGadget</classname></gadget>"
    chain = GAP_CHAIN.replace("<stream>", f"<stream>{reader}")
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=IDLE_WAIT_S) as sock,
        sock.makefile("rb") as rfile,
    ):
        sock.sendall(serialize(ConfigText(chain), header, *sent[:before_failure], close=False))
        try:
            reply = list(read_messages(rfile))
        except TimeoutError:
            pytest.fail(f"no ERROR within {IDLE_WAIT_S} s although slice 0 failed; the server waits for more input")
    (error,) = errors(reply)
    assert error.startswith("ERROR gadget 'Buffer' (AcquisitionBufferGadget) failed: ValueError: ")
    (path,) = journal_files(server)  # closed before CLOSE was sent, while the reader may still wait for input
    assert_same_acquisitions(read_journal(path), sent[:before_failure])


# A chain that ends without an output gadget: its SliceBuffer cannot be serialized to the client.
BUFFER_ONLY_CHAIN = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <version>2</version>
  <stream>
    <gadget>
      <name>Buffer</name><dll>qmri</dll><classname>AcquisitionBufferGadget</classname>
      <property name="trigger" value="end_of_stream"/>
    </gadget>
  </stream>
</configuration>
"""


@pytest.mark.parametrize(
    ("config", "data", "names"),
    [
        pytest.param(ConfigText(BUFFER_ONLY_CHAIN), "readouts", "SliceBuffer", id="chain-without-output-gadget"),
        pytest.param(ConfigFile("passthrough"), "ndarray", "ndarray", id="ndarray-through-passthrough"),
    ],
)
def test_output_the_protocol_cannot_carry_gets_an_error(
    server: MrdServer, scan: tuple, few: list, config: Any, data: str, names: str
) -> None:
    """ReplyWriter.send raises TypeError with a message for the client; the client must receive it as ERROR."""
    header, items = scan
    payload = items[:20] if data == "readouts" else [np.zeros((2, 3), dtype=np.float32)]
    reply = exchange(server.port, serialize(config, header, *payload))
    assert len(errors(reply)) == 1, f"the client got CLOSE without an ERROR: {texts(reply)}"
    assert reply[-1] == errors(reply)[0]
    assert names in reply[-1]
    assert_passthrough_works(server.port, header, few)


def test_journal_that_cannot_be_written_is_not_a_silent_empty_reply(tmp_path: Path, scan: tuple) -> None:
    """A journal directory that cannot be created: the client gets its data or an ERROR, never just CLOSE."""
    header, items = scan
    not_a_dir = tmp_path / "journal"
    not_a_dir.write_text("a file where the journal directory should be")
    server = MrdServer("127.0.0.1", 0, site=SiteSettings(journal_dir=not_a_dir))
    server.start_in_background()
    try:
        reply = exchange(server.port, serialize(ConfigFile("passthrough"), header, *items[:20]))
    finally:
        server.shutdown()
        server.server_close()
    assert acquisitions(reply) or errors(reply), f"the client got nothing but CLOSE: {reply}"
    if not errors(reply):
        assert_same_acquisitions(acquisitions(reply), items[:20])


# ---------------------------------------------------------------------------------------------------- 8. journal


def test_journal_holds_the_good_stream(server: MrdServer, scan: tuple) -> None:
    header, items = scan
    reply = exchange(server.port, serialize(ConfigFile("passthrough"), header, *items))
    assert texts(reply) == []
    (path,) = journal_files(server)
    assert path.name.startswith(f"{header.measurementInformation.protocolName}_")
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dataset:
        xml = dataset.read_xml_header()
    assert xml.decode() == header.toXML()
    assert_same_acquisitions(read_journal(path), items)


def test_journal_of_failed_stream_holds_what_was_read(server: MrdServer, scan: tuple) -> None:
    header, items = scan
    sent, before_failure = _phase_gap(items)
    assert len(errors(exchange(server.port, serialize(ConfigText(GAP_CHAIN), header, *sent)))) == 1
    (path,) = journal_files(server)
    journaled = read_journal(path)
    assert before_failure <= len(journaled) <= len(sent)
    assert_same_acquisitions(journaled, sent[: len(journaled)])
