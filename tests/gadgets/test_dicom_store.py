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
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

import gadgets.dicom.store as store
from gadgets.dicom.store import DicomNode, FlushResult, Outbox
from gadgets.runtime.chain import CHAINS_DIR, load_chain
from gadgets.runtime.replay import replay
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
    stage = f"""    <gadget>
      <name>Dicom</name>
      <dll>qmri</dll>
      <classname>DicomOutputGadget</classname>
      <property name="node_host" value="{node.host}"/>
      <property name="node_port" value="{node.port}"/>
      <property name="called_ae" value="{node.called_ae}"/>
    </gadget>
  </stream>"""
    text = (CHAINS_DIR / "cartesian_multiphase.xml").read_text().replace("  </stream>", stage)
    path = folder / "to_node.xml"
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


@pytest.fixture(scope="module")
def status_node() -> Iterator[tuple[DicomNode, dict[str, int]]]:
    """A pynetdicom SCP that answers every C-STORE with the status in the returned dict (the node is not Orthanc)."""
    answer = {"status": 0x0000}
    scp = AE(ae_title="STATUS")
    scp.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian])
    scp.add_supported_context(Verification)
    handlers = [(evt.EVT_C_STORE, lambda _: answer["status"])]
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    yield DicomNode("127.0.0.1", server.server_address[1], called_ae="STATUS"), answer
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "removed"),
    [(0x0000, True), (0xB000, True), (0xB007, True), (0xB006, False), (0xA700, False), (0xC000, False)],
)
def test_status_decides_whether_a_file_leaves(
    status: int, removed: bool, status_node: tuple[DicomNode, dict[str, int]], tmp_path: Path
) -> None:
    node, answer = status_node
    answer["status"] = status
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
