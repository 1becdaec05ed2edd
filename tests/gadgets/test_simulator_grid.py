"""The simulator never makes a file that its own chain refuses: small files over matrices and accelerations.

``qmri simulate`` takes any matrix from 32 and any acceleration from 1; the default ACS fraction (8% where the PUQ
paper gives none) leaves 2 to 5 calibration lines on small matrices, fewer than ESPIRiT needs, so the chains must
fall back to low-resolution coil maps rather than refuse the file.
"""

from pathlib import Path

import h5py
import numpy as np
import pytest

from gadgets.evaluate import read_series
from gadgets.runtime.chain import resolve_chain
from gadgets.runtime.replay import replay
from qmri_models.recon.cartesian import MIN_ESPIRIT_LINES
from qmri_models.simulation.sampling import acs_lines
from qmri_models.simulation.scan import ScanSettings
from tests.conftest import make_raw

CHAINS = {"molli": "t1_molli", "t2prep": "t2prep", "ir": "t1_ir", "sasha": "t1_sasha"}
"""Each simulated contrast and the shipped chain that maps it."""

GRID = [
    # (matrix, acceleration, coils): every acceleration 1-10 and beyond, odd and even matrices, one coil
    (32, 1, 2),
    (32, 2, 2),
    (32, 3, 1),
    (32, 4, 2),
    (33, 5, 2),
    (32, 6, 2),
    (48, 7, 2),
    (32, 8, 2),
    (40, 9, 2),
    (40, 10, 2),
    (32, 16, 2),
    (64, 3, 2),
    (64, 10, 2),
    (96, 4, 2),
]


@pytest.mark.parametrize("contrast", sorted(CHAINS))
@pytest.mark.parametrize(("matrix", "acceleration", "n_coils"), GRID)
def test_simulated_file_replays_through_its_chain(
    tmp_path: Path, contrast: str, matrix: int, acceleration: int, n_coils: int
) -> None:
    raw = make_raw(
        tmp_path / "scan.h5", contrast=contrast, matrix=matrix, acceleration=acceleration, n_coils=n_coils, seed=2
    )
    out = replay(raw, resolve_chain(CHAINS[contrast]), tmp_path / "out", progress=False)
    maps, _ = read_series(out, 11)
    sds, _ = read_series(out, 12)
    assert maps.shape == sds.shape == (1, matrix, matrix)
    assert np.all(np.isfinite(maps))
    with h5py.File(raw) as f:
        truth = f["truth"]["t2_ms" if contrast == "t2prep" else "t1_ms"][0]
        labels = f["truth"]["labels"][0]
    brain = (labels == 1) | (labels == 2)
    # a map, not noise: measured 0.60 (IR, 32^2 at 2x, two coils) to 1.18 of the truth's median in the brain
    assert 0.4 < np.median(maps[0][brain]) / np.median(truth[brain]) < 1.6


def test_the_grid_has_files_on_both_sides_of_espirits_calibration_lines() -> None:
    lines = {
        acs_lines(m, ScanSettings(contrast="molli", matrix=m, acceleration=r).acs).size for m, r, _ in GRID if r > 1
    }
    assert min(lines) == 2
    assert max(lines) >= MIN_ESPIRIT_LINES
