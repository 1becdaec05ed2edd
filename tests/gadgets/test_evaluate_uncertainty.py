"""``qmri evaluate-uncertainty`` end to end: it replays fresh slices through a classical chain and reports them.

Slow: it simulates and replays slices through the shipped chains."""

import dataclasses
import json

import pytest

from gadgets.cli import main
from gadgets.uncertainty_evaluation import CORRELATION_NAMES, STRUCTURE_TISSUES, evaluate_spheres, sphere_table
from qmri_models.calibration.files import load_interval_calibration
from qmri_models.simulation.anatomy import sphere_phantom

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("chain", ["t1_molli", "t2prep"])
def test_evaluate_uncertainty_reports_every_acceleration(chain, tmp_path, capsys):
    out = tmp_path / "evaluation.json"
    argv = ["evaluate-uncertainty", "--chain", chain, "--accelerations", "1", "4", "--slices", "2", "--matrix", "32"]
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["chain"] == chain
    assert result["seed"] == 400_000
    reports = result["accelerations"]
    assert [r["acceleration"] for r in reports] == [1, 4]
    for report in reports:
        assert 0.0 <= report["coverage"] <= 1.0
        assert report["n_slices"] == 2
        assert report["n_pixels"] > 0
        assert report["scale"] > 0
        assert set(report["correlations"]) == set(CORRELATION_NAMES)
        assert all(-1.0 <= s["mean"] <= 1.0 for s in report["correlations"].values() if s["mean"] is not None)
        assert {s["tissue"] for s in report["structures"]} == set(STRUCTURE_TISSUES)
        assert 0.0 <= report["structure_within_half_width"] <= 1.0
        coverage_row = f"| {report['acceleration']} | {report['scale']:.2f} | 2 | {report['n_pixels']} | "
        assert coverage_row + f"{report['coverage']:.4f} |" in table
    assert table.count("\n| 4 |") == 3  # one row in each table


def test_an_uncalibrated_acceleration_is_refused_before_any_replay(caplog):
    argv = ["evaluate-uncertainty", "--chain", "t1_molli", "--accelerations", "3", "--slices", "1", "--quiet"]
    assert main(argv) == 2
    assert "no scale for acceleration 3" in caplog.text


def test_spheres_are_scored_against_their_nist_values(tmp_path, capsys):
    """One 64^2 sphere phantom slice at 4x through t2prep: every sphere's truth, error, SD and structure interval."""
    calibration = load_interval_calibration("t2prep")
    evidence = calibration.scale_for(4)
    with_structures = dataclasses.replace(calibration, structure_scales={4: dataclasses.replace(evidence, scale=3.0)})

    rows = evaluate_spheres(with_structures, accelerations=[4], n_slices=1, progress=False)

    t2 = sphere_phantom(64).t2_ms
    labels = sphere_phantom(64).labels
    assert [r.sphere for r in rows] == [f"sphere_{i:02d}" for i in range(1, 15)]
    for index, row in enumerate(rows):
        assert row.truth == pytest.approx(float(t2[labels == index + 2][0]), rel=1e-5)
        assert row.flagged is None  # a classical chain has no learned map to flag
        assert row.covered == (abs(row.mean - row.truth) <= 3.0 * row.mean_sd)
        assert row.error_percent == pytest.approx(100 * (row.mean - row.truth) / row.truth)
    mid = [r for r in rows if 40 <= r.truth <= 250]
    assert len(mid) >= 4
    means = [r.mean for r in sorted(mid, key=lambda r: r.truth)]
    assert means == sorted(means), [(r.truth, r.mean) for r in mid]  # 64^2 at 4x reads high, but in order
    table = sphere_table(with_structures, rows)
    assert table.count("\n| 4 | sphere_") == 14
    assert "Structure interval coverage over sphere x slice cases: " in table
