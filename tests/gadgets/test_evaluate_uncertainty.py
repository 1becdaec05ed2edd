"""``qmri evaluate-uncertainty`` end to end: it replays fresh slices through a classical chain and reports them.

Slow: it simulates and replays slices through the shipped chains."""

import json

import pytest

from gadgets.cli import main
from gadgets.uncertainty_evaluation import CORRELATION_NAMES, STRUCTURE_TISSUES

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
