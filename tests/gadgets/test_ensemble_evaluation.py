"""``qmri evaluate-ensemble`` end to end on tiny untrained members, and its parts."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gadgets.cli import main
from gadgets.ensemble_evaluation import ALPHA, TISSUES, MethodMaps, evaluation_slices, score_method, slice_structures
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.training.configs import ReconTrainingConfig

TINY = ReconTrainingConfig(map_name="t1", matrix=32, n_coils=4, accelerations=(4,), n_iterations=1, hidden=4)


def write_member(path: Path, seed: int, config: ReconTrainingConfig = TINY) -> Path:
    """Write an untrained member as ``qmri train puq-recon`` writes weights: a near-identity denoiser of its seed."""
    torch.manual_seed(seed)
    network = UnrolledRecon(n_phases=8, n_iterations=config.n_iterations, hidden=config.hidden, dropout=0.3)
    with torch.no_grad():
        for denoiser in network.denoisers:
            denoiser.last.weight.mul_(0.1)  # small residuals: the members differ a little from the zero-filled image
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dataclasses.asdict(config), "state_dict": network.state_dict()}, path)
    return path


def test_evaluate_ensemble_prints_both_methods_side_by_side(tmp_path, capsys) -> None:
    paths = [str(write_member(tmp_path / f"run{s}" / "weights.pt", s)) for s in (1, 2, 3)]
    argv = ["evaluate-ensemble", "--members", *paths, "--slices", "2", "--acceleration", "4", "--mc-samples", "3"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| figure | MC dropout (member 1, T = 3) | deep ensemble (M = 3) |" in table
    assert "| samples per slice | 3 | 3 |" in table
    assert "matrix 32, hidden 4, 1 iterations, dropout 0.3" in table
    one_sd = re.search(r"\| pixel coverage of map ± 1 SD[^|]*\| ([0-9.]+) \| ([0-9.]+) \|", table)
    assert one_sd is not None
    assert all(0.0 <= float(c) <= 1.0 for c in one_sd.groups())
    # untrained members: lambda is a number or no lambda of the grid controls the risk, never an error
    assert re.search(r"\| λ \(calibrated[^|]*\| ([0-9.]+|none ≤ 20) \| ([0-9.]+|none ≤ 20) \|", table)
    structures = re.search(r"\| structures \(classes x slices\) \| (\d+) \| (\d+) \|", table)
    assert structures is not None
    assert int(structures.group(1)) > 0


def test_evaluate_ensemble_refuses_members_of_different_maps(tmp_path, caplog) -> None:
    t1 = write_member(tmp_path / "a.pt", 1)
    t2 = write_member(tmp_path / "b.pt", 2, dataclasses.replace(TINY, map_name="t2"))
    assert main(["evaluate-ensemble", "--members", str(t1), str(t2)]) == 2
    assert "members reconstruct different maps: ['t1', 't2']" in caplog.text
    assert main(["evaluate-ensemble", "--members", str(t1)]) == 2
    assert "at least 2 --members" in caplog.text


def test_structure_sd_is_the_sd_of_the_samples_structure_means() -> None:
    """Samples offset by -d, 0, +d ms: every structure's sample SD is d * sqrt(2/3), its error the map's bias."""
    item = evaluation_slices("t1", 1, matrix=32, n_coils=4, snr=50.0, acceleration=4, seed=5)[0]
    truth = item.truth_ms.astype(np.float32)
    kept = truth > 0
    value = np.where(kept, truth + 10.0, 0.0).astype(np.float32)
    samples = np.stack([value - 30.0, value, value + 30.0])[None]
    maps = MethodMaps(
        name="offsets",
        n_samples=3,
        value=value[None],
        sd=np.full((1, 32, 32), 7.0, dtype=np.float32),
        samples=samples,
        kept=kept[None],
        recon_s=[0.0],
        fit_s=[0.0],
    )
    structures = slice_structures(0, maps, truth)
    assert structures
    assert sum(s.n_pixels for s in structures) <= int(kept.sum())
    for s in structures:
        assert s.sample_sd == pytest.approx(30.0 * np.sqrt(2.0 / 3.0), rel=1e-5)
        assert s.error == pytest.approx(10.0, rel=1e-5)
        assert s.mean_voxel_sd == pytest.approx(7.0)


def test_score_method_calibrates_gaussian_errors_to_their_quantile() -> None:
    """Maps off by N(0, SD) with SD 5 % of the truth: lambda near the normal 90 % quantile, coverage near 0.9."""
    slices = evaluation_slices("t1", 4, matrix=32, n_coils=4, snr=50.0, acceleration=4, seed=7)
    rng = np.random.default_rng(0)
    truth = np.stack([item.truth_ms for item in slices]).astype(np.float32)
    kept = truth > 0
    sd = np.where(kept, 0.05 * truth, 0.0).astype(np.float32)
    value = np.where(kept, truth + sd * rng.standard_normal(truth.shape), 0.0).astype(np.float32)
    samples = value[:, None] + sd[:, None] * rng.standard_normal((4, 5, 32, 32)).astype(np.float32)
    maps = MethodMaps("gaussian", 5, value, sd, samples, kept, recon_s=[1.0] * 4, fit_s=[2.0] * 4)
    report = score_method(maps, slices)
    assert report.interval is not None
    # the 90th percentile of |N(0, 1)| is 1.645; the bound's margin on ~1000 pixel items (delta 0.1) asks a bit more
    assert 1.6 < report.interval.scale < 2.1
    assert 1 - ALPHA - 0.01 < report.interval.coverage < 0.97
    for tissue in TISSUES:
        assert report.interval.width_percent[tissue] == pytest.approx(200 * 0.05 * report.interval.scale, rel=0.1)
    assert report.one_sd_coverage == pytest.approx(0.683, abs=0.04)
    assert report.error_percent == pytest.approx(100 * 0.05 * np.sqrt(2 / np.pi), rel=0.15)
    assert report.recon_s == 1.0
    assert report.fit_s == 2.0
    assert report.structures
