"""Trust levels: a client's chain text cannot reach the file system, a model file or another host; the site can.

Each attack is one that worked against the server before site properties existed (issue 13): DICOM folders and
outboxes written outside ``--output``, associations opened to a host and port of the client's choosing (a port
scanner), and weights paths whose error text told whether a file exists and leaked its first byte.
"""

import io
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

from gadgets.dicom_output import DicomOutputConfig
from gadgets.recon import CartesianReconConfig
from gadgets.runtime.chain import ChainError, load_chain, parse_chain, resolve_chain
from gadgets.runtime.client import send_stream
from gadgets.runtime.config import MAX_TEXT_CHARS
from gadgets.runtime.protocol import read_messages
from gadgets.runtime.replay import replay
from gadgets.runtime.server import MrdServer
from gadgets.runtime.session import SiteSettings
from tests.chain_variants import shipped_text, variant_text
from tests.conftest import free_port, make_raw, pynetdicom_refused_socket, raw_header_and_items

TIMEOUT_S = 30.0


def start_only(port: int, config: Any) -> list[Any]:
    """Send only the config message (no header, no data, the connection left open) and return the reply."""
    payload = io.BytesIO()
    ProtocolSerializer(payload).serialize(config)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock, sock.makefile("rb") as rfile:
        sock.sendall(payload.getvalue())
        return list(read_messages(rfile))


@pytest.fixture
def site_server(tmp_path: Path) -> Any:
    """A server with an output folder and a site chain folder, both under tmp_path; stopped afterwards."""
    output, site = tmp_path / "output", tmp_path / "site_chains"
    output.mkdir()
    site.mkdir()
    server = MrdServer("127.0.0.1", 0, site=SiteSettings(output_dir=output, site_chains=site))
    server.start_in_background()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("gadget", "name", "value"),
    [
        ("Dicom", "folder", "/tmp/qmri-escape"),
        ("Dicom", "folder", "../escape"),
        ("Dicom", "outbox", "/tmp/qmri-escape-outbox"),
        ("Dicom", "node_host", "10.0.0.1"),
        ("Dicom", "node_port", "22"),
        ("Dicom", "called_ae", "PACS"),
    ],
)
def test_a_client_chain_setting_a_site_property_is_refused_before_its_header(
    site_server: MrdServer, tmp_path: Path, gadget: str, name: str, value: str
) -> None:
    text = variant_text("t1_molli", gadget, **{name: value})
    reply = start_only(site_server.port, ConfigText(text))  # nothing but the config was sent: no header, no data
    (error,) = reply
    assert error.startswith(f"ERROR config text: gadget '{gadget}' (DicomOutputGadget): property '{name}'")
    assert "site setting" in error
    assert "--site-chains" in error
    assert not (tmp_path / "escape").exists()
    assert not Path("/tmp/qmri-escape").exists()


@pytest.mark.parametrize(
    ("gadget", "classname", "name"),
    [
        ("Buffer", "AcquisitionBufferGadget", "max_buffer_mb"),
        ("Buffer", "AcquisitionBufferGadget", "slice_readout_margin"),
        ("Buffer", "AcquisitionBufferGadget", "open_slice_margin"),
        ("NoiseAdjust", "NoiseAdjustGadget", "max_noise_readouts"),
    ],
)
def test_a_client_chain_cannot_raise_the_buffer_caps(
    site_server: MrdServer, gadget: str, classname: str, name: str
) -> None:
    text = variant_text("t1_molli", gadget, **{name: "16"})
    (error,) = start_only(site_server.port, ConfigText(text))
    assert error.startswith(f"ERROR config text: gadget '{gadget}' ({classname}): property '{name}'")


def test_a_client_chain_cannot_make_the_server_connect_anywhere(site_server: MrdServer, molli_raw: Path) -> None:
    """The node a client names is never contacted: a listener on that port sees no connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    node_port = listener.getsockname()[1]
    text = variant_text("t1_molli", "Dicom", node_host="127.0.0.1", node_port=str(node_port))
    header, items = raw_header_and_items(molli_raw)
    reply = send_stream("127.0.0.1", site_server.port, header, items, config_text=text)
    assert [t for t in reply.errors if "property 'node_host'" in t]
    assert reply.images == []
    with listener, pytest.raises(TimeoutError):
        listener.accept()


def test_weights_paths_from_a_client_are_refused_alike_whether_the_file_exists_or_not(
    site_server: MrdServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"\x80\x02 not a weights file")
    replies = []
    for path in (secret, tmp_path / "missing.pt"):
        text = variant_text("t1_molli_puq", "Recon", weights=str(path))
        (error,) = start_only(site_server.port, ConfigText(text))
        replies.append(error.replace(str(path), "PATH"))
        assert "property 'weights'" in error
    assert replies[0] == replies[1]  # nothing tells the two apart
    assert "128" not in replies[0]  # the unpickler's "Unsupported operand 128" no longer reaches the client
    (fit_error,) = start_only(
        site_server.port, ConfigText(variant_text("t1_molli_puq", "Fit", fit_weights=str(secret)))
    )
    assert "property 'fit_weights'" in fit_error


def test_a_client_may_send_a_shipped_chain_text_and_pick_shipped_weights() -> None:
    """Site properties at their defaults, or set to a shipped choice (weights t2), are not site settings."""
    for name in ("t1_molli", "t2prep", "t1_molli_puq", "t2prep_puq", "mrf_fisp"):
        parse_chain(shipped_text(name))  # what the shipped chains write is what a client may write
    chain = parse_chain(variant_text("t2prep_puq", "Recon", weights="t1"))
    (recon,) = [stage for stage in chain.stages if stage.name == "Recon"]
    assert recon.config.weights == "t1"  # type: ignore[attr-defined]


def test_config_file_names_are_names_not_paths(site_server: MrdServer, tmp_path: Path) -> None:
    (tmp_path / "passwd.xml").write_text(shipped_text("passthrough"))
    for name in ("../../passwd.xml", str(tmp_path / "passwd.xml"), "/etc/passwd"):
        (error,) = start_only(site_server.port, ConfigFile(name))
        assert error.startswith("ERROR no chain 'passwd' on this server (chains: ")


@pynetdicom_refused_socket
def test_a_site_chain_is_offered_by_name_and_may_set_site_properties(
    site_server: MrdServer, tmp_path: Path, molli_raw: Path
) -> None:
    """The site's folder: a chain with a DICOM node (down here) that a client names by CONFIG_FILE."""
    assert site_server.site.site_chains is not None
    text = variant_text("t1_molli", "Dicom", node_host="127.0.0.1", node_port=str(free_port()), folder="maps")
    (site_server.site.site_chains / "site_molli.xml").write_text(text)
    header, items = raw_header_and_items(molli_raw)
    reply = send_stream("127.0.0.1", site_server.port, header, items, config_file="site_molli")
    assert not reply.errors
    (warning,) = [t for t in reply.texts if t.startswith("WARNING")]
    assert "did not store every file" in warning
    output = tmp_path / "output"
    assert len(list((output / "maps").rglob("*.dcm"))) == 10  # T1, SD, the two bounds, the SR of two slices
    assert len(list((output / "dicom_outbox").glob("*.dcm"))) == 10


@pytest.mark.parametrize("folder", ["/tmp/qmri-absolute", "../outside", "sub/../../outside"])
def test_even_a_site_chain_writes_only_inside_the_output_folder(tmp_path: Path, molli_raw: Path, folder: str) -> None:
    path = tmp_path / "chain.xml"
    path.write_text(variant_text("t1_molli", "Dicom", folder=folder))
    with pytest.raises(Exception, match="must name a folder inside the output folder"):
        replay(molli_raw, load_chain(path), tmp_path / "out", progress=False)
    assert not (tmp_path / "outside").exists()
    assert not Path("/tmp/qmri-absolute").exists()


def test_a_symlink_in_the_output_folder_does_not_lead_out(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw.h5", contrast="molli", acceleration=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "dicom").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Exception, match="leads out of the output folder through a symbolic link"):
        replay(raw, resolve_chain("t1_molli"), out, progress=False)
    assert list(outside.iterdir()) == []


def test_site_property_docs_and_text_limits() -> None:
    docs = {doc.name: doc for doc in DicomOutputConfig.describe()}
    assert docs["node_host"].site
    assert docs["folder"].site
    assert not any(doc.site for doc in CartesianReconConfig.describe())
    with pytest.raises(ChainError, match=f"at most {MAX_TEXT_CHARS} are allowed"):
        parse_chain(variant_text("t1_molli", "PhaseImages", data_role="x" * 10_000))
    with pytest.raises(ChainError, match="expects a finite number"):
        parse_chain(variant_text("t1_molli", "Recon", cg_lambda="nan"))


def test_concurrent_refusals_leave_no_thread_behind(site_server: MrdServer) -> None:
    text = variant_text("t1_molli", "Dicom", folder="/etc")
    before = threading.active_count()
    threads = [threading.Thread(target=start_only, args=(site_server.port, ConfigText(text))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    deadline = threading.Event()
    for _ in range(100):
        if threading.active_count() <= before:
            break
        deadline.wait(0.05)
    assert threading.active_count() <= before
