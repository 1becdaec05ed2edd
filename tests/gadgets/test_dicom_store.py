"""C-STORE through the outbox to a real Orthanc: every instance arrives bit-exact; a node that is down or refuses
loses nothing; ``qmri dicom-flush`` delivers later."""

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import h5py
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

import gadgets.dicom.store as store
from gadgets.dicom.store import OUTBOX_MARKER, DicomNode, FlushResult, NotAnOutboxError, Outbox
from gadgets.runtime.chain import load_chain
from gadgets.runtime.replay import replay
from tests.chain_variants import variant_text, with_gadget
from tests.conftest import ensure_debian_tool, free_port, make_raw, pynetdicom_refused_socket

AET = "QMRITEST"


class Orthanc:
    """An Orthanc on loopback with its own config, storage, DICOM and HTTP ports; start() and stop() at will."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.config = folder / "orthanc.json"
        self.log = folder / "orthanc.log"
        config = {
            "Name": "qmri-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,  # a wrong called AE is rejected
            "DicomAlwaysAllowStore": True,  # our calling AE needs no DicomModalities entry
            "DicomCheckModalityHost": False,
            "DicomModalities": {},
            "UnknownSopClassAccepted": False,
            "Plugins": [],
        }
        self.config.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-600:]
        self.stop()
        pytest.skip(f"Orthanc ({self.binary}) did not start on 127.0.0.1:{self.http_port}/{self.dicom_port}: {tail}")

    def stop(self, *, wait: bool = True) -> None:
        """Ask Orthanc to stop (SIGTERM); with ``wait``, wait for it and kill it if it does not go in 10 s."""
        if self.process is None:
            return
        self.process.terminate()
        if wait:
            self.wait_stopped()

    def wait_stopped(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def node(self, called_ae: str = AET) -> DicomNode:
        return DicomNode("127.0.0.1", self.dicom_port, called_ae=called_ae, calling_ae="QMRI")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as reply:
            return bytes(reply.read())

    def instances(self) -> dict[str, Dataset]:
        """SOP Instance UID -> the instance as Orthanc returns it (downloaded through the REST API)."""
        found = {}
        for orthanc_id in json.loads(self.get("/instances")):
            ds = pydicom.dcmread(BytesIO(self.get(f"/instances/{orthanc_id}/file")))
            found[str(ds.SOPInstanceUID)] = ds
        return found


@pytest.fixture(scope="session")
def orthanc_binary() -> str:
    return shutil.which("Orthanc") or ensure_debian_tool("/usr/sbin/Orthanc", "orthanc")


@pytest.fixture(scope="session")
def stopping() -> Iterator[list[Orthanc]]:
    """Orthancs asked to stop; they take ~4 s to stop (HTTP and DICOM polling), so they stop alongside later tests."""
    servers: list[Orthanc] = []
    yield servers
    for server in servers:
        server.wait_stopped()


@pytest.fixture
def orthanc_down(orthanc_binary: str, tmp_path: Path, stopping: list[Orthanc]) -> Iterator[Orthanc]:
    """An Orthanc configured, ports chosen, not started yet; stopped after the test if the test started it."""
    server = Orthanc(orthanc_binary, tmp_path / "orthanc")
    yield server
    server.stop(wait=False)
    stopping.append(server)


@pytest.fixture
def orthanc(orthanc_down: Orthanc) -> Orthanc:
    """A running Orthanc of its own: empty storage, free DICOM and HTTP ports on loopback."""
    orthanc_down.start()
    return orthanc_down


def mr_image(pixels: np.ndarray, study: str, series: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Brain", "QMRI-1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = (
        "20240101",
        "1200",
        "",
        "1",
        "",
    )
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "MR", 1, number, "qmri"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "2D"
    ds.EchoTrainLength, ds.RepetitionTime, ds.EchoTime = 1, 3.0, 1.5
    ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], 8.0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(number)], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PositionReferenceIndicator = ""
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=16)
    return ds


def write_instances(folder: Path, n_mr: int = 3, n_maps: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Write MR images (int16) and parametric maps (float32) into ``folder``; return SOP Instance UID -> pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    sent: dict[str, np.ndarray] = {}
    sources = []
    for i in range(n_mr):
        pixels = rng.integers(-2000, 4000, size=(16, 20), dtype=np.int16)
        ds = mr_image(pixels, study, series, i + 1)
        ds.save_as(folder / f"mr_{i}.dcm", enforce_file_format=True)
        sent[str(ds.SOPInstanceUID)] = pixels
        sources.append(ds)
    for i in range(n_maps):
        t1_ms = (rng.uniform(200.0, 2000.0, size=(16, 20)) + rng.normal(size=(16, 20)) * 1e-3).astype(np.float32)
        t1_ms[0, :3] = [0.0, -1.5, 1e-7]  # signs and tiny values survive too
        uid = generate_uid()
        pm = hd.pm.ParametricMap(
            source_images=[sources[i % n_mr]],
            pixel_array=t1_ms,
            series_instance_uid=generate_uid(),
            series_number=100 + i,
            sop_instance_uid=uid,
            instance_number=1,
            manufacturer="qmri",
            manufacturer_model_name="qmri-gadgets",
            software_versions="0.1",
            device_serial_number="1",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[
                hd.pm.RealWorldValueMapping(
                    lut_label="T1",
                    lut_explanation="T1 in ms",
                    unit=codes.UCUM.Millisecond,
                    value_range=(-10.0, 3000.0),
                    slope=1.0,
                    intercept=0.0,
                )
            ],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=1000.0, window_width=2000.0)],
        )
        pm.save_as(folder / f"t1map_{i}.dcm", enforce_file_format=True)
        sent[uid] = t1_ms
    return sent


def assert_arrived(orthanc: Orthanc, sent: dict[str, np.ndarray]) -> None:
    stored = orthanc.instances()
    assert set(stored) == set(sent)
    for uid, pixels in sent.items():
        back = stored[uid].pixel_array
        assert back.dtype == pixels.dtype
        np.testing.assert_array_equal(back, pixels, strict=True)


def fill(outbox: Outbox, folder: Path) -> dict[Path, bytes]:
    """Add every file of ``folder`` to the outbox; return outbox path -> the bytes it must keep."""
    return {outbox.add(p): p.read_bytes() for p in sorted(folder.glob("*.dcm"))}


def dicom_flush(folder: Path, port: int, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``qmri dicom-flush`` as people do, in its own process."""
    command = [sys.executable, "-m", "gadgets", "dicom-flush", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.run([*command, *options], capture_output=True, text=True, check=False, timeout=60)


def test_every_instance_arrives_bit_exact(orthanc: Orthanc, tmp_path: Path) -> None:
    sent = write_instances(tmp_path / "written")
    outbox = Outbox(tmp_path / "outbox")
    added = fill(outbox, tmp_path / "written")
    assert outbox.pending() == list(added)  # oldest first
    assert not list(outbox.folder.glob(".*.part"))

    result = outbox.flush(orthanc.node())

    assert result == FlushResult(sent=len(sent), kept=0, errors=[])
    assert outbox.pending() == []
    assert_arrived(orthanc, sent)


@pynetdicom_refused_socket
def test_node_down_keeps_everything_and_dicom_flush_delivers_later(orthanc_down: Orthanc, tmp_path: Path) -> None:
    sent = write_instances(tmp_path / "written", seed=1)
    outbox = Outbox(tmp_path / "outbox")
    added = fill(outbox, tmp_path / "written")

    result = outbox.flush(orthanc_down.node())

    assert (result.sent, result.kept) == (0, len(sent))
    assert len(result.errors) == 1
    assert f"127.0.0.1:{orthanc_down.dicom_port}" in result.errors[0]
    assert "refused" in result.errors[0].lower()
    assert {p: p.read_bytes() for p in outbox.pending()} == added

    orthanc_down.start()
    cli = dicom_flush(outbox.folder, orthanc_down.dicom_port, "--called-ae", AET, "--calling-ae", "QMRI")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"sent {len(sent)}, kept 0" in cli.stdout
    assert outbox.pending() == []
    assert_arrived(orthanc_down, sent)


def test_dicom_flush_exits_1_and_prints_errors_when_files_stay(orthanc_down: Orthanc, tmp_path: Path) -> None:
    write_instances(tmp_path / "written", n_mr=1, n_maps=0)
    outbox = Outbox(tmp_path / "outbox")
    fill(outbox, tmp_path / "written")
    cli = dicom_flush(outbox.folder, orthanc_down.dicom_port)
    assert cli.returncode == 1
    assert "error: cannot reach" in cli.stdout
    assert "sent 0, kept 1" in cli.stdout
    assert len(outbox.pending()) == 1


def test_rejected_association_keeps_files_and_says_rejected(orthanc: Orthanc, tmp_path: Path) -> None:
    write_instances(tmp_path / "written", n_mr=2, n_maps=1)
    outbox = Outbox(tmp_path / "outbox")
    added = fill(outbox, tmp_path / "written")

    result = outbox.flush(orthanc.node(called_ae="NOT-ORTHANC"))

    assert (result.sent, result.kept) == (0, 3)
    assert "rejected" in result.errors[0]
    assert "NOT-ORTHANC" in result.errors[0]
    assert {p: p.read_bytes() for p in outbox.pending()} == added
    assert json.loads(orthanc.get("/instances")) == []


def test_a_sop_class_the_node_refuses_stays_and_the_rest_is_sent(orthanc: Orthanc, tmp_path: Path) -> None:
    sent = write_instances(tmp_path / "written", n_mr=2, n_maps=0)
    odd = mr_image(np.zeros((4, 4), np.int16), generate_uid(), generate_uid(), 1)
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.1"  # a private class
    odd.save_as(tmp_path / "written" / "odd.dcm", enforce_file_format=True)
    outbox = Outbox(tmp_path / "outbox")
    fill(outbox, tmp_path / "written")

    result = outbox.flush(orthanc.node())

    assert (result.sent, result.kept) == (2, 1)
    assert [p.name.endswith("odd.dcm") for p in outbox.pending()] == [True]
    assert "1.2.826.0.1.3680043.8.498.1" in result.errors[0]
    assert_arrived(orthanc, sent)

    only_odd = outbox.flush(orthanc.node())  # nothing the node takes: it aborts, the file stays
    assert (only_odd.sent, only_odd.kept) == (0, 1)
    assert "takes none of the SOP classes" in only_odd.errors[0]


def test_a_silent_node_times_out_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "ASSOCIATION_TIMEOUT_S", 0.5)
    write_instances(tmp_path / "written", n_mr=1, n_maps=0)
    outbox = Outbox(tmp_path / "outbox")
    fill(outbox, tmp_path / "written")
    with socket.socket() as silent:  # accepts TCP connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.monotonic()
        result = outbox.flush(DicomNode("127.0.0.1", silent.getsockname()[1]))
        took = time.monotonic() - start
    assert (result.sent, result.kept) == (0, 1)
    assert "not answering within 0.5 s" in result.errors[0]
    assert took < 3


@pytest.fixture(scope="module")
def molli_r1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("raw") / "r.h5", contrast="molli", acceleration=1)


def chain_to(node: DicomNode, folder: Path) -> Path:
    """The shipped cartesian_multiphase chain with a DicomOutputGadget stage sending to ``node`` appended."""
    text = with_gadget(
        "cartesian_multiphase",
        "Dicom",
        "DicomOutputGadget",
        node_host=node.host,
        node_port=node.port,
        called_ae=node.called_ae,
    )
    path = folder / "to_node.xml"  # a site's chain file: it may name a DICOM node
    path.write_text(text)
    return path


def written_dicom(out: Path) -> list[Path]:
    return sorted(p for p in (out / "dicom").rglob("*.dcm") if not p.name.startswith("."))


def test_replay_sends_every_written_file_to_the_node(orthanc: Orthanc, molli_r1: Path, tmp_path: Path) -> None:
    chain = load_chain(chain_to(orthanc.node(), tmp_path))
    out = tmp_path / "out"

    replay(molli_r1, chain, out, progress=False)

    files = written_dicom(out)
    assert len(files) == 8  # one slice, 8 MOLLI phases
    assert Outbox(out / "dicom_outbox").pending() == []
    stored = orthanc.instances()
    assert len(stored) == len(files)
    for path in files:
        ds = pydicom.dcmread(path)
        np.testing.assert_array_equal(stored[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array, strict=True)


@pynetdicom_refused_socket
def test_replay_with_the_node_down_keeps_files_in_the_outbox(
    orthanc_down: Orthanc, molli_r1: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain = load_chain(chain_to(orthanc_down.node(), tmp_path))
    out = tmp_path / "out"

    with caplog.at_level(logging.INFO, logger="gadgets.runtime.replay"):
        images = replay(molli_r1, chain, out, progress=False)

    with h5py.File(images, "r") as f:
        assert f["dataset/image_1/data"].shape[0] == 8
    files = written_dicom(out)
    outbox = Outbox(out / "dicom_outbox")
    assert sorted(p.read_bytes() for p in outbox.pending()) == sorted(p.read_bytes() for p in files)
    warnings = [r.getMessage() for r in caplog.records if "chain message: WARNING" in r.getMessage()]
    assert len(warnings) == 1
    assert f"8 files kept in {outbox.folder}" in warnings[0]
    assert "qmri dicom-flush" in warnings[0]

    orthanc_down.start()
    assert Outbox(outbox.folder).flush(orthanc_down.node()) == FlushResult(sent=8, kept=0, errors=[])
    assert len(orthanc_down.instances()) == 8


@dataclass
class StatusScp:
    """What the status node answers to every C-STORE, and what it has seen since the test began."""

    status: int = 0x0000
    received: list[str] = field(default_factory=list)
    """SOP Instance UIDs of the C-STOREs, in order."""
    associations: int = 0


@pytest.fixture(scope="module")
def status_server() -> Iterator[tuple[DicomNode, StatusScp]]:
    """A pynetdicom storage SCP for every storage SOP class that answers each C-STORE with ``StatusScp.status``."""
    seen = StatusScp()

    def store(event: evt.Event) -> int:
        seen.received.append(str(event.request.AffectedSOPInstanceUID))
        return seen.status

    def accepted(_: evt.Event) -> None:
        seen.associations += 1

    scp = AE(ae_title="STATUS")
    for context in AllStoragePresentationContexts:
        scp.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    scp.add_supported_context(Verification)
    handlers = [(evt.EVT_C_STORE, store), (evt.EVT_ACCEPTED, accepted)]
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    yield DicomNode("127.0.0.1", server.server_address[1], called_ae="STATUS"), seen
    server.shutdown()


@pytest.fixture
def status_node(status_server: tuple[DicomNode, StatusScp]) -> tuple[DicomNode, StatusScp]:
    """The status node, answering success and with nothing seen yet."""
    node, seen = status_server
    seen.status, seen.associations = 0x0000, 0
    seen.received.clear()
    return node, seen


@pytest.mark.parametrize(
    ("status", "removed"),
    [(0x0000, True), (0xB000, True), (0xB007, True), (0xB006, False), (0xA700, False), (0xC000, False)],
)
def test_status_decides_whether_a_file_leaves(
    status: int, removed: bool, status_node: tuple[DicomNode, StatusScp], tmp_path: Path
) -> None:
    node, scp = status_node
    scp.status = status
    write_instances(tmp_path / "written", n_mr=1, n_maps=0)
    outbox = Outbox(tmp_path / "outbox")
    fill(outbox, tmp_path / "written")
    result = outbox.flush(node)
    assert (result.sent, result.kept) == ((1, 0) if removed else (0, 1))
    assert len(outbox.pending()) == (0 if removed else 1)
    if not removed:
        assert f"0x{status:04X}" in result.errors[0]


def test_outbox_add_refuses_a_file_that_is_not_dicom(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    outbox = Outbox(tmp_path / "outbox")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        outbox.add(text)
    assert outbox.pending() == []
    assert outbox.add(Path(get_testdata_file("MR_small.dcm"))).name.endswith("MR_small.dcm")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"port": 0}, "port .* got 0"),
        ({"port": 70000}, "got 70000"),
        ({"port": True}, "got True"),
        ({"host": " "}, "host .* got ' '"),
        ({"called_ae": ""}, "called_ae .* got ''"),
        ({"called_ae": "A" * 17}, "called_ae .* 'AAAAAAAAAAAAAAAAA' \\(17\\)"),
        ({"calling_ae": "ÄRZTE"}, "calling_ae .* 'ÄRZTE'"),
        ({"calling_ae": "A\\B"}, "calling_ae .* backslash"),
    ],
)
def test_dicom_node_names_the_bad_value(fields: dict[str, object], match: str) -> None:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 104, "called_ae": "ORTHANC", "calling_ae": "QMRI"}
    with pytest.raises(ValueError, match=match):
        DicomNode(**{**values, **fields})  # type: ignore[arg-type]


def test_a_second_flush_of_the_same_outbox_leaves_it_to_the_first(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.add(Path(get_testdata_file("MR_small.dcm")))
    with outbox._lock() as first:
        assert first
        result = outbox.flush(DicomNode("127.0.0.1", free_port()))
    assert result == FlushResult(
        sent=0, kept=1, errors=[f"another flush of outbox {outbox.folder} is running; 1 file(s) left to it"]
    )
    assert len(outbox.pending()) == 1


def test_dicom_flush_of_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    cli = dicom_flush(tmp_path / "nowhere", 104)
    assert cli.returncode == 2
    assert "nowhere is not a folder" in cli.stderr
    assert not (tmp_path / "nowhere").exists()


# --- results are not an outbox: dicom-flush refuses them, dicom-send sends them and leaves them ---------------------


def qmri(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the ``qmri`` command as people do, in its own process."""
    command = [sys.executable, "-m", "gadgets", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def node_options(node: DicomNode) -> list[str]:
    return ["--host", node.host, "--port", str(node.port), "--called-ae", node.called_ae, "--calling-ae", "QMRI"]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file under ``folder``, hidden ones too, as relative path -> bytes (links: -> their target)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = str(path.readlink())
        elif path.is_file():
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def per_file(stdout: str, word: str) -> list[str]:
    """The per-file lines of a dicom-flush or dicom-send that start with ``word`` (stored, kept, failed, skipped)."""
    return [line for line in stdout.splitlines() if line.split(" ", 1)[0] == word]


@pytest.fixture(scope="module")
def replayed(molli_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A replay of the shipped t1_molli chain with its phase images on: dicom/ holds series 1 (8 MR images), 11 and
    12 (T1 and T1 SD Parametric Maps), 21 and 22 (its interval's bounds) and 90 (the structure report, a TID 1500
    SR), one subfolder each, as a new user finds it."""
    folder = tmp_path_factory.mktemp("replay")
    chain = folder / "t1_molli_phases.xml"  # a site's chain file: the parser reads it as the shipped ones
    chain.write_text(variant_text("t1_molli", "Fit", send_phase_images="true"))
    replay(molli_r1, load_chain(chain), folder / "out", progress=False)
    return folder / "out"


@pytest.fixture
def results(replayed: Path, tmp_path: Path) -> Path:
    """This test's own copy of the replay's output folder (images.h5, dicom/<scan>/series_NNNN/*.dcm)."""
    return Path(shutil.copytree(replayed, tmp_path / "out", symlinks=True))


def replay_dicom_files(results: Path) -> dict[str, str]:
    """Path relative to ``results/dicom`` -> SOP Instance UID, for every DICOM file the replay wrote."""
    dicom = results / "dicom"
    return {str(p.relative_to(dicom)): str(pydicom.dcmread(p).SOPInstanceUID) for p in sorted(dicom.rglob("*.dcm"))}


def test_the_replay_fixture_is_what_a_user_finds(results: Path) -> None:
    files = replay_dicom_files(results)
    assert len(files) == 13
    series = {"series_0001", "series_0011", "series_0012", "series_0021", "series_0022", "series_0090"}
    assert {Path(name).parent.name for name in files} == series
    assert [p for p in (results / "dicom").iterdir() if p.is_file()] == []  # only series subfolders


def test_an_outbox_is_marked_and_the_marker_is_never_sent(
    status_node: tuple[DicomNode, StatusScp], tmp_path: Path
) -> None:
    node, scp = status_node
    sent = write_instances(tmp_path / "written", n_mr=1, n_maps=1)
    outbox = Outbox(tmp_path / "outbox")
    marker = outbox.folder / OUTBOX_MARKER
    assert "qmri DICOM outbox" in marker.read_text()
    assert "qmri dicom-send" in marker.read_text()
    fill(outbox, tmp_path / "written")
    assert marker not in outbox.pending()
    assert len(outbox.pending()) == 2

    result = outbox.flush(node)

    assert result == FlushResult(sent=2, kept=0, errors=[])
    assert [outcome.stored for outcome in result.files] == [True, True]
    assert sorted(scp.received) == sorted(sent)
    assert marker.is_file()
    assert Outbox(outbox.folder, create=False).pending() == []


def test_an_outbox_whose_marker_is_gone_is_not_flushed(
    status_node: tuple[DicomNode, StatusScp], tmp_path: Path
) -> None:
    node, scp = status_node
    outbox = Outbox(tmp_path / "outbox")
    added = outbox.add(Path(get_testdata_file("MR_small.dcm")))
    (outbox.folder / OUTBOX_MARKER).unlink()

    result = outbox.flush(node)

    assert (result.sent, result.kept) == (0, 1)
    assert "not a qmri DICOM outbox" in result.errors[0]
    assert added.is_file()
    assert scp.received == []
    with pytest.raises(NotAnOutboxError, match=r"outbox.* is not a qmri DICOM outbox"):
        Outbox(outbox.folder, create=False)


@pytest.mark.parametrize("where", ["dicom", "series"])
def test_dicom_flush_refuses_results_and_touches_nothing(
    where: str, results: Path, status_node: tuple[DicomNode, StatusScp]
) -> None:
    node, scp = status_node
    target = results / "dicom"
    if where == "series":
        (target,) = (p / "series_0001" for p in target.iterdir())
    before = snapshot(results)

    cli = qmri("dicom-flush", target, "--host", node.host, "--port", node.port, "--called-ae", "STATUS")

    assert cli.returncode == 2
    assert cli.stdout == ""
    (line,) = cli.stderr.splitlines()
    assert f"{target} is not a qmri DICOM outbox" in line
    assert f"qmri dicom-send {target} --host 127.0.0.1 --port {node.port} --called-ae STATUS" in line
    assert snapshot(results) == before  # nothing deleted, no lock or marker written
    assert scp.received == []


@pynetdicom_refused_socket
def test_dicom_flush_sends_the_outbox_a_replay_left_and_keeps_the_marker(
    molli_r1: Path, status_node: tuple[DicomNode, StatusScp], tmp_path: Path
) -> None:
    node, scp = status_node
    down = DicomNode("127.0.0.1", free_port(), called_ae="STATUS")
    out = tmp_path / "out"
    replay(molli_r1, load_chain(chain_to(down, tmp_path)), out, progress=False)  # DicomOutputGadget made the outbox
    outbox = out / "dicom_outbox"
    assert (outbox / OUTBOX_MARKER).is_file()
    pending = Outbox(outbox, create=False).pending()
    assert len(pending) == 8

    still_down = qmri("dicom-flush", outbox, *node_options(down))

    assert still_down.returncode == 1
    assert "Traceback" not in still_down.stderr
    assert per_file(still_down.stdout, "kept") == [
        f"kept    {p.name}: not sent: no association with {down}" for p in pending
    ]
    (error,) = [line for line in still_down.stdout.splitlines() if line.startswith("error:")]
    assert f"cannot reach STATUS@127.0.0.1:{down.port}" in error
    assert "refused" in error.lower()
    assert "is the node running" in error
    assert still_down.stdout.splitlines()[-1] == f"{down}: sent 0, kept 8 in {outbox}"
    assert Outbox(outbox, create=False).pending() == pending

    cli = qmri("dicom-flush", outbox, *node_options(node))

    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert per_file(cli.stdout, "stored") == [f"stored  {p.name}" for p in pending]
    assert cli.stdout.splitlines()[-1] == f"{node}: sent 8, kept 0 in {outbox}"
    assert Outbox(outbox, create=False).pending() == []
    assert (outbox / OUTBOX_MARKER).is_file()
    assert sorted(scp.received) == sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in written_dicom(out))


def test_dicom_send_stores_a_replay_in_orthanc_and_leaves_every_file(orthanc: Orthanc, results: Path) -> None:
    dicom = results / "dicom"
    files = replay_dicom_files(results)
    before = snapshot(results)

    cli = qmri("dicom-send", dicom, *node_options(orthanc.node()))

    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert per_file(cli.stdout, "stored") == [f"stored  {name}" for name in files]
    assert cli.stdout.splitlines()[-1] == (
        f"{orthanc.node()}: stored 13 of 13 DICOM file(s) under {dicom}, 0 other entries skipped; "
        "no file moved or deleted"
    )
    assert snapshot(results) == before
    stored = orthanc.instances()
    assert set(stored) == set(files.values())
    for name, uid in files.items():
        sent = pydicom.dcmread(dicom / name)
        if "ContentSequence" in sent:  # the structure report: no pixels, its content as sent
            assert stored[uid].ContentSequence == sent.ContentSequence
            continue
        np.testing.assert_array_equal(stored[uid].pixel_array, sent.pixel_array, strict=True)


def test_dicom_send_uses_one_association_and_skips_what_is_not_dicom_or_a_link(
    results: Path, status_node: tuple[DicomNode, StatusScp], tmp_path: Path
) -> None:
    node, scp = status_node
    dicom = results / "dicom"
    files = replay_dicom_files(results)
    outside = write_instances(tmp_path / "outside", n_mr=1, n_maps=0)  # DICOM that must not leave through a link
    (dicom / "notes.txt").write_text("scan notes")
    (dicom / "outside.dcm").symlink_to(tmp_path / "outside" / "mr_0.dcm")
    (dicom / "outside_series").symlink_to(tmp_path / "outside", target_is_directory=True)
    before = snapshot(results)

    cli = qmri("dicom-send", dicom, *node_options(node))

    assert cli.returncode == 0, cli.stdout + cli.stderr  # the skipped entries are reported, not fatal
    assert scp.associations == 1  # MR images and Parametric Maps: two contexts, one association
    assert sorted(scp.received) == sorted(files.values())
    assert not set(scp.received) & set(outside)
    assert per_file(cli.stdout, "stored") == [f"stored  {name}" for name in files]
    notes, link, linked_folder = per_file(cli.stdout, "skipped")
    assert notes.startswith("skipped notes.txt: not a readable DICOM file")
    assert (
        link
        == f"skipped outside.dcm: symbolic link to {tmp_path / 'outside' / 'mr_0.dcm'} (out of {dicom}): not followed"
    )
    assert linked_folder.startswith(f"skipped outside_series: symbolic link to {tmp_path / 'outside'} (out of")
    assert "stored 13 of 13 DICOM file(s)" in cli.stdout
    assert "3 other entries skipped" in cli.stdout
    assert snapshot(results) == before


@pytest.mark.parametrize(
    ("status", "word", "reason", "returncode"),
    [
        (0x0000, "stored", "", 0),
        (0xB000, "stored", ": warning 0xB000 (Coercion of Data Elements)", 0),
        (
            0xA700,
            "failed",
            ": C-STORE status 0xA700 from STATUS@127.0.0.1:{port} (Failure: Refused: Out of Resources)",
            1,
        ),
    ],
)
def test_dicom_send_prints_what_the_node_answered_for_every_file(
    status: int,
    word: str,
    reason: str,
    returncode: int,
    status_node: tuple[DicomNode, StatusScp],
    tmp_path: Path,
) -> None:
    node, scp = status_node
    scp.status = status
    results = tmp_path / "results"
    write_instances(results / "a", n_mr=2, n_maps=1, seed=1)
    write_instances(results / "b", n_mr=1, n_maps=1, seed=2)
    names = sorted(str(p.relative_to(results)) for p in results.rglob("*.dcm"))
    before = snapshot(results)

    cli = qmri("dicom-send", results, *node_options(node))

    assert cli.returncode == returncode, cli.stdout + cli.stderr
    expected = [f"{word:<7} {name}{reason.format(port=node.port)}" for name in names]
    assert cli.stdout.splitlines()[:-1] == expected
    assert f"stored {len(names) if word == 'stored' else 0} of {len(names)} DICOM file(s)" in cli.stdout
    assert len(scp.received) == len(names) == 5
    assert snapshot(results) == before


def test_dicom_send_with_the_node_down_says_so_once_and_keeps_every_file(results: Path) -> None:
    dicom = results / "dicom"
    files = replay_dicom_files(results)
    down = DicomNode("127.0.0.1", free_port(), called_ae="PACS")
    before = snapshot(results)

    cli = qmri("dicom-send", dicom, *node_options(down))

    assert cli.returncode == 1
    assert "Traceback" not in cli.stderr
    assert per_file(cli.stdout, "failed") == [
        f"failed  {name}: not sent: no association with PACS@127.0.0.1:{down.port}" for name in files
    ]
    (error,) = [line for line in cli.stdout.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: cannot reach PACS@127.0.0.1:{down.port} (")
    assert "refused" in error.lower()
    assert "is the node running" in error
    assert error.endswith("; 13 file(s) not sent")
    assert cli.stdout.splitlines()[-1].startswith(f"{down}: stored 0 of 13 DICOM file(s)")
    assert snapshot(results) == before


def test_dicom_send_of_a_folder_without_dicom_files_fails(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("scan notes")

    cli = qmri("dicom-send", tmp_path / "notes", "--host", "127.0.0.1", "--port", free_port())

    assert cli.returncode == 1
    assert per_file(cli.stdout, "skipped")[0].startswith("skipped notes.txt: not a readable DICOM file")
    assert "no DICOM files under" in cli.stdout.splitlines()[-1]

    missing = qmri("dicom-send", tmp_path / "nowhere", "--host", "127.0.0.1", "--port", 104)
    assert missing.returncode == 2
    assert "nowhere is not a folder" in missing.stderr
