"""Packaging: the wheel holds every package, the shipped chains and weights, and runs without the checkout.

The wheel test builds the wheel of this checkout, installs it (without dependencies) into a fresh virtual environment
that borrows the test environment's third-party packages through a ``.pth`` file (and so none of its ``.pth`` files:
not the checkout's editable install), and runs the installed ``qmri`` from a folder outside the checkout: the chains
it lists and the maps a short replay of a simulated MOLLI scan makes through the shipped ``t1_molli`` chain.
No network: the build uses the installed setuptools (``--no-build-isolation``).
"""

import os
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _packages_in_pyproject() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def test_pyproject_lists_every_package() -> None:
    """A subpackage missing from ``[tool.setuptools] packages`` would be missing from the wheel."""
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("gadgets", "qmri_models")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= _packages_in_pyproject(), sorted(found - _packages_in_pyproject())
    assert "qmri_chains" in _packages_in_pyproject()


def _run(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    _run([*build, str(ROOT)], cwd=outside, env=env, timeout=300)
    (wheel,) = wheels.glob("qmri_gadgets-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=outside, env=env, timeout=120)
    python = venv / "bin" / "python"
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "third_party.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    _run([*install, str(wheel)], cwd=outside, env=env, timeout=300)

    where = _run(
        [str(python), "-c", "import gadgets, qmri_models, qmri_chains; print(gadgets.__file__)"],
        cwd=outside,
        env=env,
        timeout=120,
    )
    assert Path(where.stdout.strip()).is_relative_to(purelib)
    installed = [p.relative_to(purelib).as_posix() for p in purelib.rglob("*") if p.is_file()]
    for name in ("t1_molli.xml", "t2prep.xml", "mrf_fisp.xml"):
        assert f"qmri_chains/{name}" in installed
    for name in ("puq_recon_t1.pt", "puq_fit_t2.pt", "PUQ_T1.md", "PUQ_T2.md"):
        assert f"qmri_models/pretrained/{name}" in installed

    qmri = str(venv / "bin" / "qmri")
    lines = _run([qmri, "chains"], cwd=outside, env=env, timeout=120).stdout.splitlines()
    assert {"t1_molli", "t2prep", "mrf_fisp", "t1_molli_puq"} <= {line.split()[0] for line in lines}
    assert not [line for line in lines if "INVALID" in line]

    raw, out = outside / "molli.h5", outside / "out"
    simulate = [qmri, "simulate", "molli", "--matrix", "64", "--coils", "4", "--seed", "5", "--out", str(raw)]
    _run(simulate, cwd=outside, env=env, timeout=300)
    _run(
        [qmri, "replay", str(raw), "--chain", "t1_molli", "--out", str(out), "--quiet"],
        cwd=outside,
        env=env,
        timeout=600,
    )
    with ismrmrd.Dataset(str(out / "images.h5"), "dataset", create_if_needed=False) as dataset:
        assert {"image_11", "image_12"} <= set(dataset.list())
        t1_ms = dataset.read_image("image_11", 0).data[0, 0]
    with h5py.File(raw, "r") as f:
        truth_ms = f["truth"]["t1_ms"][0]
    tissue = truth_ms > 0
    assert t1_ms.shape == truth_ms.shape
    assert np.median(np.abs(t1_ms[tissue] - truth_ms[tissue]) / truth_ms[tissue]) < 0.1
