"""Shared fixtures: small simulated raw files and a live server on a free loopback port."""

import io
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ProtocolSerializer

from gadgets.runtime.protocol import parse_header, read_messages
from gadgets.runtime.server import MrdServer
from gadgets.runtime.session import SiteSettings
from qmri_models.simulation.raw_writer import write_raw
from qmri_models.simulation.scan import ScanSettings, simulate_scan

SMALL = {"matrix": 64, "n_coils": 4, "snr": 50.0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip every ``cuda``-marked test when no CUDA device is present (torch imported only when one is collected)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (none found)"))


def make_raw(path: Path, **settings: object) -> Path:
    """Simulate a raw file with the given ScanSettings fields (small defaults for tests)."""
    values = {**SMALL, **settings}
    scan = ScanSettings(**values)  # type: ignore[arg-type]
    write_raw(path, scan, simulate_scan(scan))
    return path


@pytest.fixture(scope="session")
def molli_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64, 8-coil, 4x undersampled MOLLI brain scan with two slices and 10 ACS lines."""
    return make_raw(
        tmp_path_factory.mktemp("raw") / "molli_R4.h5",
        contrast="molli",
        acceleration=4,
        acs_fraction=0.16,
        n_slices=2,
        n_coils=8,
    )


@pytest.fixture(scope="session")
def t2prep_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64, 4-coil, fully sampled T2-prep brain scan."""
    return make_raw(tmp_path_factory.mktemp("raw") / "t2prep_R1.h5", contrast="t2prep", acceleration=1, seed=3)


def raw_header_and_items(raw: Path) -> tuple[object, list[object]]:
    """Return a raw file's parsed header and its items as a client would send them."""
    from gadgets.runtime.replay import raw_items

    with h5py.File(raw, "r") as f:
        return parse_header(f["dataset"]["xml"][0].decode()), list(raw_items(f["dataset"]))


def stream_mode_images(chain: str, header: object, items: list[object], *options: str) -> list[ismrmrd.Image]:
    """Return the images ``qmri stream --chain CHAIN`` (a subprocess) sends back for a header and its items."""
    stream_in = io.BytesIO()
    with ProtocolSerializer(stream_in) as serializer:
        serializer.serialize(header)
        for item in items:
            serializer.serialize(item)
    result = subprocess.run(
        [sys.executable, "-m", "gadgets", "stream", "--chain", chain, *options],
        input=stream_in.getvalue(),
        capture_output=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return [m for m in read_messages(io.BytesIO(result.stdout)) if isinstance(m, ismrmrd.Image)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MrdServer]:
    """A running MRD server on a free loopback port, journaling to tmp_path/journal, files in tmp_path/output."""
    srv = MrdServer("127.0.0.1", 0, site=SiteSettings(output_dir=tmp_path / "output", journal_dir=tmp_path / "journal"))
    srv.start_in_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def ensure_debian_tool(executable: str, package: str) -> str:
    """Return the path of a Debian tool, installing its package when missing (as root), else skip the test."""
    found = shutil.which(executable)
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip(f"{executable} missing and apt-get unavailable to install Debian package {package}")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        if result.returncode != 0:
            pytest.skip(f"{executable} missing and `{' '.join(command)}` failed: {result.stderr.strip()[-300:]}")
    found = shutil.which(executable)
    if not found:
        pytest.skip(f"Debian package {package} installed but {executable} is not on PATH")
    return found


def dciodvfy_lines(path: Path) -> list[str]:
    """The Error and Warning lines dciodvfy prints for a file."""
    tool = shutil.which("dciodvfy", path=str(Path(sys.executable).parent)) or shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]


# pynetdicom <= 3.0.4 does not close its socket when the TCP connect is refused (shutdown() of an unconnected
# socket raises first, then it drops the reference); CPython closes it when collected, with a ResourceWarning that
# filterwarnings=error turns into a failure. Fixed upstream: pydicom/pynetdicom#979, #999.
pynetdicom_refused_socket = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def free_port() -> int:
    """Return a loopback TCP port nobody listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROUNDING = 1e-4
"""How far two runs of one PUQ stream in two processes may differ, as a fraction of the series' largest value.

torch's float work is bit for bit within one process and thread team, but not always across processes: one CI run
saw PUQ's uncertainty series differ by 7.3e-6 (its largest value 0.91) between a Gadgetron external and the pytest
process, mean images identical (not reproduced in 30 local tries); 3 torch threads against 2 move the T1 map by
0.02 ms of 4558 and the images by 5e-7 (one replay after ``torch.set_num_threads(3)`` against one at 2). A
different dropout seed moves them by far more (``test_unseeded_mc_dropout_differs_between_replays`` holds it).
"""


def max_difference_of_max(got: np.ndarray, expected: np.ndarray) -> float:
    """Return the largest ``|got - expected|`` as a fraction of ``expected``'s largest magnitude (same shapes)."""
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), np.finfo(np.float32).tiny))
