"""Every ``qmri`` command answers bad arguments, bad files and bad settings with one line naming them and exit status 2,
never a traceback (``--debug`` shows it); a bug is no such line: it keeps its traceback. A failed replay leaves no
half-written output."""

import logging
import subprocess
import sys
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

import gadgets.cli.chains
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
        (["simulate", "mrf", "--out", "m.h5", "--phantom", "spheres"], "unrecognized arguments: --phantom spheres"),
        (["simulate", "molli", "--out", "m.h5", "--phantom", "cube"], "argument --phantom: invalid choice: 'cube'"),
        (["train", "puq-fit", "--out", "run", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
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
        (["simulate", "mrf", "--truncation", "0", "--out", str(tmp_path / "m.h5")], "truncation must be at least 1"),
        (["train", "puq-recon", "--steps", "0", "--out", str(tmp_path / "run")], "steps must be at least 1"),
        (["preview", str(tmp_path / "none.h5"), "--series", "11", "--out", str(tmp_path / "p.png")], "none.h5"),
        (["dicom-send", str(tmp_path), "--host", "pacs", "--port", "104", "--called-ae", "A" * 17], "called_ae"),
    ]
    for args, named in cases:
        caplog.clear()
        assert main(args) == 2, args
        assert named in one_error_line(caplog), args
    assert not (tmp_path / "o1").exists()
    assert not (tmp_path / "o2").exists()
    assert not (tmp_path / "s.h5").exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), ValueError("a bug, not bad input")])
def test_a_bug_is_not_a_one_line_error(
    bug: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only our own errors (chain, stream, file, usage) are one line; a ValueError of a bug propagates as it is."""

    def broken() -> dict[str, Path]:
        raise bug

    monkeypatch.setattr(gadgets.cli.chains, "shipped_chains", broken)
    with pytest.raises(type(bug), match=str(bug)):
        main(["chains"])
    assert not [r for r in caplog.records if r.name == "qmri"]


def test_a_bug_shows_its_traceback() -> None:
    code = (
        "import sys, gadgets.cli.chains as chains; from gadgets.cli import main; "
        "chains.shipped_chains = lambda: 1 / 0; sys.exit(main(['chains']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ZeroDivisionError: division by zero" in result.stderr


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
