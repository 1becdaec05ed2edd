"""Every ``qmri`` command answers bad arguments and bad files with one line naming them and a non-zero exit, never a
traceback (``--debug`` shows it); a failed replay leaves no half-written output."""

import logging
import subprocess
import sys
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from gadgets.cli import main
from tests.conftest import make_raw


def qmri(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gadgets", *args], capture_output=True, text=True, check=False, timeout=300
    )


def one_error_line(caplog: pytest.LogCaptureFixture) -> str:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "qmri"]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "\n" not in message
    assert "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "--port", "80000"], "argument --port: a port is 1 to 65535, got 80000"),
        (["serve", "--max-connections", "0"], "argument --max-connections: expected a number of at least 1, got 0"),
        (["serve", "--idle-timeout", "nan"], "argument --idle-timeout: expected a positive number, got 'nan'"),
        (["serve", "--site-chains", "/no/such/folder"], "argument --site-chains: /no/such/folder is not a folder"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(args: list[str], named: str) -> None:
    result = qmri(*args)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_files_are_one_line_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_hdf5 = tmp_path / "scan.h5"
    not_hdf5.write_text("not an HDF5 file")
    bad_chain = tmp_path / "chain.xml"
    bad_chain.write_text("<configuration><version>2</version")
    cases = [
        (["replay", str(tmp_path / "missing.h5"), "--chain", "t1_molli", "--out", str(tmp_path / "o1")], "missing.h5"),
        (["replay", str(not_hdf5), "--chain", "t1_molli", "--out", str(tmp_path / "o2")], "scan.h5"),
        (["replay", str(not_hdf5), "--chain", "no_such_chain", "--out", str(tmp_path / "o3")], "no_such_chain"),
        (["check-chain", str(bad_chain)], "chain.xml: malformed XML"),
        (["evaluate", str(tmp_path / "nothing"), str(not_hdf5)], "nothing"),
        (["simulate", "molli", "--matrix", "8", "--out", str(tmp_path / "s.h5")], "matrix must be at least 32"),
    ]
    for args, named in cases:
        caplog.clear()
        assert main(args) == 2, args
        assert named in one_error_line(caplog), args
    assert not (tmp_path / "o1").exists()
    assert not (tmp_path / "o2").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = qmri("--debug", "check-chain", str(tmp_path / "missing.xml"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_a_failed_replay_leaves_no_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Spiral readouts (a trajectory) through a Cartesian chain fail; nothing of the replay stays behind."""
    raw = make_raw(tmp_path / "molli.h5", contrast="molli", acceleration=1, n_slices=2)
    with ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False) as dataset:
        n = dataset.number_of_acquisitions()
        last = dataset.read_acquisition(n - 1)
    spiral = ismrmrd.Acquisition.from_array(last.data, trajectory=np.zeros((last.number_of_samples, 2), np.float32))
    spiral.setHead(last.getHead())
    spiral.resize(last.number_of_samples, last.active_channels, 2)
    spiral.data[:] = last.data
    with ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False) as dataset:
        dataset.append_acquisition(spiral)
    out = tmp_path / "out"
    assert main(["replay", str(raw), "--chain", "t1_molli", "--out", str(out), "--quiet"]) == 2
    assert "trajectory" in one_error_line(caplog)
    assert not out.exists()  # the first slice's DICOM and the images file were written, then removed
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("a user's file")
    assert main(["replay", str(raw), "--chain", "t1_molli", "--out", str(existing), "--quiet"]) == 2
    assert sorted(p.name for p in existing.rglob("*")) == ["keep.txt"]
