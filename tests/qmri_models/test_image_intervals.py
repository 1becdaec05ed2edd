"""Intervals on the PUQ phase images: the image quantile head's contract, the scoring of a conformalised uncertainty
on synthetic images whose error law is known, and the whole study end to end at a toy size.

Synthetic law: true magnitudes of about 10, and an MC mean that is the truth plus complex Gaussian noise of per-pixel
SD ``s`` (0.1-1, varying over the image); the error head reports ``s`` exactly, the MC SD a constant. The magnitude
error is then about ``N(0, s^2 / 2)``, so ``|mean| -+ lambda s`` covers ``2 Phi(lambda sqrt(2)) - 1`` of the pixels
and the oracle 90% scale is ``1.645 / sqrt(2) = 1.16``.
"""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from gadgets.cli import main
from qmri_models.image_interval_evaluation import ImageIntervalStudy, StageOne, score
from qmri_models.networks.image_quantile_head import ImageQuantileHead

PHASES = 3
SIZE = 20


def synthetic(seed: int, n: int) -> StageOne:
    """Return ``n`` synthetic slices of the module docstring's law."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE
    s = 0.1 + 0.9 * ((x + y) / 2)[None, None] * np.ones((n, PHASES, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, PHASES, SIZE, SIZE))
    target = 10 * np.exp(1j * phase)
    noise = s * (rng.standard_normal(target.shape) + 1j * rng.standard_normal(target.shape)) / np.sqrt(2)
    tissue = np.ones((n, SIZE, SIZE), bool)
    tissue[:, :2] = False
    return StageOne(
        mean=torch.from_numpy((target + noise).astype(np.complex64)),
        zero_filled=torch.from_numpy(target.astype(np.complex64)),
        mc_sd=torch.full((n, PHASES, SIZE, SIZE), 0.5),
        error_sd=torch.from_numpy(s.astype(np.float32)),
        target=torch.from_numpy(target.astype(np.complex64)),
        tissue=torch.from_numpy(tissue),
        acceleration=torch.from_numpy(rng.choice([6, 8], n)),
    )


def test_head_offsets_are_sigmoid_times_the_magnitude() -> None:
    head = ImageQuantileHead(n_phases=PHASES, hidden=4)
    data = synthetic(0, 2)
    lower, upper = head(data.mean, data.zero_filled, data.mc_sd)
    assert lower.shape == upper.shape == data.mc_sd.shape
    for offset in (lower, upper):
        assert (offset >= 0).all()
        assert (offset <= data.mean.abs()).all()
    with pytest.raises(ValueError, match="n_phases and hidden must be at least 1"):
        ImageQuantileHead(n_phases=0)


def test_a_known_error_sd_is_calibrated_to_its_gaussian_scale_and_beats_a_flat_one() -> None:
    study = ImageIntervalStudy(n_calibration=60)
    head = ImageQuantileHead(n_phases=PHASES, hidden=4)
    calibration, test = synthetic(1, 60), synthetic(2, 30)
    informed = score("error_head", head, calibration, test, study)
    flat = score("mc_sd", head, calibration, test, study)
    # at least the oracle 90% scale (the guarantee), at most the 97% one (not needlessly wide with 60 slices)
    assert norm.ppf(0.95) / np.sqrt(2) <= informed.scale <= norm.ppf(0.985) / np.sqrt(2)
    expected_coverage = 2 * norm.cdf(informed.scale * np.sqrt(2)) - 1
    assert informed.coverage == pytest.approx(expected_coverage, abs=0.015)
    for result in (informed, flat):
        assert result.coverage >= 0.9 - 0.01
        assert sorted(result.coverage_by_acceleration) == [6, 8]
    assert informed.width_percent < flat.width_percent
    assert informed.pearson_mean > 0.5 > flat.pearson_mean


@pytest.mark.slow
def test_the_study_runs_end_to_end_at_a_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    """Shipped T1 network, 32^2, a few slices and steps: the table has every method with coverages in [0, 1]."""
    words = ["evaluate-image-intervals", "--map", "t1", "--matrix", "32", "--train", "2", "--calibration", "30"]
    words += ["--test", "3", "--steps", "3", "--mc-samples", "2", "--alpha", "0.3", "--delta", "0.3", "--quiet"]
    assert main(words) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["quantile_head", "error_head", "mc_sd"]
    for row in rows:
        coverage = float(row.split("|")[4])
        assert 0.0 <= coverage <= 1.0
