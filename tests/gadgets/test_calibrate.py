"""``qmri calibrate`` and the calibration run: the shipped calibrations hold their coverage on fresh slices, the
command writes a file and card that agree and that its own command line reproduces, and bad settings are named.

The slow tests replay simulated slices through the classical chains."""

import dataclasses
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gadgets.calibration_run import (
    CALIBRATION_SEED,
    CHECK_SEED,
    SEEDS_PER_ACCELERATION,
    CalibrationData,
    CalibrationSettings,
    card_path,
    check_coverage,
    map_chain,
    pooled_coverage,
    replay_provenance,
)
from gadgets.cli import build_parser, main
from gadgets.puq_recon import PuqReconConfig
from gadgets.quantile_head_run import HEAD_TRAINING_SEED, WEIGHTS_NAME, train_chain_quantile_head
from qmri_models.calibration.bounds import DEFAULT_BOUND
from qmri_models.calibration.files import load_interval_calibration, shipped_calibrations
from qmri_models.pretrained import load_map_quantile_head, weights_path
from qmri_models.structures.classify import classes_for
from qmri_models.training.train_map_quantile_head import QuantileHeadTraining

SHIPPED = {
    "t1_molli": ("t1_molli", "T1", "fit_sd", (1, 2, 4), 64, None),
    "t2prep": ("t2prep", "T2", "fit_sd", (1, 2, 4), 64, None),
    "t1_molli_puq": ("t1_molli_puq", "T1", "mc_sd_disagreement", (4, 6, 8, 10), 160, None),
    "t2prep_puq": ("t2prep_puq", "T2", "mc_sd_disagreement", (4, 6, 8, 10), 160, None),
    "t1_molli_puq_quantiles": ("t1_molli_puq", "T1", "mc_sd_disagreement", (4, 6, 8, 10), 160, "t1_molli_puq"),
    "t2prep_puq_quantiles": ("t2prep_puq", "T2", "mc_sd_disagreement", (4, 6, 8, 10), 160, "t2prep_puq"),
}
"""Each shipped calibration's chain, quantity, SD kind, accelerations, matrix and quantile head."""
CLASSICAL = ("t1_molli", "t2prep")
FRESH_SEED = 300_000
"""Seed of the slow test's fresh slices: apart from the calibration's and from the card's check."""


def card_scale_rows(card: str) -> dict[int, tuple[float, int, float, float]]:
    """Return ``{acceleration: (scale, n, risk, ucb)}`` of a model card's scales table."""
    section = card.partition("## Scales")[2].partition("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].isdecimal():
            rows[int(cells[0])] = (float(cells[1]), int(cells[2]), float(cells[3]), float(cells[4]))
    return rows


def card_coverage_rows(card: str) -> dict[int, float]:
    """Return ``{acceleration: coverage}`` of a model card's fresh-slice check."""
    section = card.partition("## Check on fresh slices")[2].partition("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].isdecimal():
            rows[int(cells[0])] = float(cells[4])
    return rows


def assert_card_matches(path: Path) -> None:
    """The card beside a calibration file shows the file's scales, risks, bounds, id and command."""
    calibration = load_interval_calibration(path)
    card = card_path(path).read_text()
    rows = card_scale_rows(card)
    assert sorted(rows) == list(calibration.accelerations)
    for acceleration, (scale, n, risk, ucb) in rows.items():
        c = calibration.scale_for(acceleration)
        assert (scale, n) == (round(c.scale, 2), c.n_items)
        assert risk == pytest.approx(c.risk, abs=5e-5)
        assert ucb == pytest.approx(c.risk_ucb, abs=5e-5)
    assert f"`{calibration.id}`" in card
    assert calibration.command in card


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_calibration_loads_with_its_recipe_and_card(name: str) -> None:
    chain, quantity, uncertainty, accelerations, matrix, head = SHIPPED[name]
    calibration = load_interval_calibration(name)
    assert (calibration.chain, calibration.quantity, calibration.uncertainty) == (chain, quantity, uncertainty)
    assert calibration.quantile_head == head
    assert (calibration.alpha, calibration.delta, calibration.bound) == (0.1, 0.1, DEFAULT_BOUND)
    assert calibration.accelerations == accelerations
    recipe = calibration.recipe
    assert (recipe["matrix"], recipe["n_coils"], recipe["snr"], recipe["noise"]) == (matrix, 8, 50.0, "correlated")
    assert recipe["structure_classes"] == list(classes_for(quantity))
    structure_scales = calibration.structure_scales or {}
    assert sorted(structure_scales) == list(accelerations)
    for acceleration in calibration.accelerations:
        for c in (calibration.scale_for(acceleration), structure_scales[acceleration]):
            assert c.n_items == recipe["n_slices"] >= 60
            assert c.risk <= c.risk_ucb <= calibration.alpha
            assert 0.0 < c.scale < recipe["max_scale"]
    ood = calibration.out_of_distribution
    assert (ood is None) == (uncertainty == "fit_sd")  # learned maps get thresholds, fitted ones none
    if ood is not None:
        assert ood.level == 0.01
        assert sorted(ood.thresholds) == list(accelerations)
    assert_card_matches(shipped_calibrations()[name])
    checked = card_coverage_rows(card_path(shipped_calibrations()[name]).read_text())
    assert sorted(checked) == list(accelerations)
    assert min(checked.values()) >= 1 - calibration.alpha - 0.01, checked


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_command_line_parses_back_to_the_recipe(name: str) -> None:
    calibration = load_interval_calibration(name)
    words = shlex.split(calibration.command)
    assert words[:2] == ["qmri", "calibrate"]
    args = build_parser().parse_args(words[1:])
    assert (args.chain, args.alpha, args.delta, args.bound) == (SHIPPED[name][0], 0.1, 0.1, calibration.bound)
    assert args.quantile_head == calibration.quantile_head
    assert tuple(args.accelerations) == calibration.accelerations
    recipe = calibration.recipe
    assert (args.n_slices, args.matrix, args.n_coils, args.snr, args.seed) == (
        recipe["n_slices"],
        recipe["matrix"],
        recipe["n_coils"],
        recipe["snr"],
        recipe["seed"],
    )


def test_calibration_and_check_slices_never_share_a_seed() -> None:
    def seeds(data: CalibrationData) -> set[int]:
        return {data.file_seed(a, i) for a in range(1, 11) for i in range(len(data.file_sizes()))}

    calibration = CalibrationData()
    check = CalibrationData(seed=CHECK_SEED, n_slices=SEEDS_PER_ACCELERATION * calibration.slices_per_file)
    assert seeds(calibration).isdisjoint(seeds(check))
    assert min(seeds(calibration)) > 20_000 > 11 + 1000  # above the tests' and the training's seeds
    assert calibration.seed == CALIBRATION_SEED
    assert calibration.file_sizes() == [10] * 10
    assert CalibrationData(n_slices=25, slices_per_file=10).file_sizes() == [10, 10, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.0}, "alpha must be in"),
        ({"accelerations": (2, 2)}, "accelerations must be distinct"),
        ({"accelerations": (0,)}, "accelerations must be at least 1"),
        ({"scale_step": 0.0}, "need 0 < scale_step"),
        ({"check_slices": -1}, "check_slices must be at least 0"),
    ],
)
def test_settings_name_the_bad_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CalibrationSettings(chain="t1_molli", **kwargs)


def test_data_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="n_slices must be at least 1"):
        CalibrationData(n_slices=0)
    with pytest.raises(ValueError, match="needs more than 1000 files"):
        CalibrationData(n_slices=2001, slices_per_file=2)


def test_a_puq_chain_is_calibrated_on_its_combined_sd_without_its_interval_gadget() -> None:
    classical = map_chain("t1_molli")
    assert (classical.uncertainty, classical.model_fit_series, classical.mc_samples) == ("fit_sd", None, None)
    assert "MapIntervalGadget" not in [s.spec.classname for s in classical.chain.stages]
    puq = map_chain("t2prep_puq")
    assert (puq.uncertainty, puq.model_fit_series, puq.mc_samples) == ("mc_sd_disagreement", 16, 20)
    assert (puq.contrast, puq.quantity, puq.map_series, puq.sd_series) == ("t2prep", "T2", 11, 12)
    assert "MapIntervalGadget" not in [s.spec.classname for s in puq.chain.stages]


def test_candidate_scales_are_the_grid() -> None:
    lambdas = CalibrationSettings(chain="t2prep", max_scale=1.0, scale_step=0.25).lambdas()
    assert lambdas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSICAL)
def test_shipped_calibration_covers_fresh_slices(name: str) -> None:
    """About 10 new slices per acceleration: pooled pixel coverage at least 1 - alpha - 1 point, near the card's."""
    calibration = load_interval_calibration(name)
    rows = check_coverage(calibration, n_slices=10, seed=FRESH_SEED, progress=False)
    card = card_coverage_rows(card_path(shipped_calibrations()[name]).read_text())
    report = {r.acceleration: (round(r.coverage, 4), r.width_percent, r.median_width_percent) for r in rows}
    assert pooled_coverage(rows) >= 1 - calibration.alpha - 0.01, report
    for row in rows:
        assert row.coverage == pytest.approx(card[row.acceleration], abs=0.04), report
        assert row.n_slices == 10
        assert row.n_covered <= row.n_pixels
        assert all(math.isfinite(w) and w > 0 for w in row.median_width_percent.values()), report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t1_molli_puq_quantiles", "t2prep_puq_quantiles"])
def test_shipped_puq_calibration_covers_a_few_fresh_slices_at_8x(name: str) -> None:
    """Three new 160^2 slices at 8x (about 30 s of PUQ on 2 cores): pixel coverage near the card's.

    A slice's coverage varies with an SD of about 0.05 at 8x (T2), so three slices and the card's ten differ by up
    to about 0.07 at two SDs: the tolerance is 0.08. The coverage floor is the issue's 0.89 less 2 points for 3 slices.
    """
    calibration = load_interval_calibration(name)
    (row,) = check_coverage(calibration, n_slices=3, seed=FRESH_SEED, accelerations=[8], progress=False)
    card = card_coverage_rows(card_path(shipped_calibrations()[name]).read_text())
    assert row.coverage >= 1 - calibration.alpha - 0.03, (row.coverage, card[8])
    assert row.coverage == pytest.approx(card[8], abs=0.08)
    assert row.n_flagged is not None
    assert row.n_flagged <= 0.05 * row.n_pixels  # brain slices like the calibration's are rarely flagged
    assert row.n_structures_covered >= 0.75 * row.n_structures


@pytest.mark.slow
def test_calibrate_writes_a_file_and_card_its_command_reproduces(tmp_path: Path) -> None:
    out = tmp_path / "t2.json"
    flags = ["--chain", "t2prep", "--alpha", "0.2", "--delta", "0.2", "--accelerations", "1", "--slices", "24"]
    small = ["--slices-per-file", "12", "--matrix", "32", "--coils", "4", "--check-slices", "4", "--quiet"]
    assert main(["calibrate", *flags, *small, "--out", str(out)]) == 0
    calibration = load_interval_calibration(out)
    assert calibration.id == "t2prep-fit_sd-a0.2-d0.2"
    assert calibration.recipe["file_seeds"] == {"1": [CALIBRATION_SEED + 1000, CALIBRATION_SEED + 1001]}
    c = calibration.scale_for(1)
    assert c.n_items == 24
    assert c.risk <= c.risk_ucb <= 0.2
    assert_card_matches(out)
    assert sorted(card_coverage_rows(card_path(out).read_text())) == [1]

    again = tmp_path / "again.json"
    words = shlex.split(calibration.command)
    words[words.index("--out") + 1] = str(again)
    assert main([*words[1:], "--quiet"]) == 0
    assert load_interval_calibration(again).scales == calibration.scales


@pytest.mark.slow
def test_too_few_slices_is_one_line_naming_the_bound(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "few.json"
    flags = ["--chain", "t1_molli", "--accelerations", "1", "--slices", "3", "--matrix", "32", "--coils", "4"]
    assert main(["calibrate", *flags, "--quiet", "--out", str(out)]) == 2
    assert re.search(r"no scale controls the risk at alpha=0.1, delta=0.1 with n=3 items", caplog.text)
    assert not out.exists()


@pytest.mark.slow
def test_a_quantile_head_trained_on_its_own_slices_is_calibrated_and_kept_maps_are_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Head trained on 6 slices (seed 700000), calibrated on 24 others, through ``qmri calibrate --quantile-head``:
    the file names the head, its card says so, its command reproduces it, and a second run replays nothing."""
    data = CalibrationData(matrix=32, n_coils=4, n_slices=6, slices_per_file=6, seed=HEAD_TRAINING_SEED)
    trained = train_chain_quantile_head(
        "t2prep", (1,), data, QuantileHeadTraining(hidden=4, epochs=3), tmp_path / "head", progress=False
    )
    assert trained.head.quantity == "T2"
    assert (tmp_path / "head" / "training_R1.npz").is_file()
    weights = tmp_path / "head" / WEIGHTS_NAME
    out, kept = tmp_path / "t2.json", tmp_path / "kept"
    flags = ["--chain", "t2prep", "--alpha", "0.2", "--delta", "0.2", "--accelerations", "1", "--slices", "24"]
    small = ["--slices-per-file", "12", "--matrix", "32", "--coils", "4", "--check-slices", "4", "--quiet"]
    head = ["--quantile-head", str(weights), "--keep-maps", str(kept)]
    assert main(["calibrate", *flags, *small, *head, "--out", str(out)]) == 0
    calibration = load_interval_calibration(out)
    assert calibration.id == "t2prep-fit_sd-quantiles-a0.2-d0.2"
    assert calibration.quantile_head == str(weights)
    assert f"quantile head `{weights}`" in card_path(out).read_text()
    assert_card_matches(out)
    caplog.clear()
    with caplog.at_level("INFO", logger="gadgets.calibration_run"):
        again = tmp_path / "again.json"
        assert main(["calibrate", *flags, *small, *head, "--out", str(again)]) == 0
    assert caplog.text.count("reusing the maps kept in") == 2  # calibration and check slices
    assert load_interval_calibration(again).scales == calibration.scales
    sd_only = tmp_path / "sd.json"
    assert main(["calibrate", *flags, *small, "--keep-maps", str(kept), "--out", str(sd_only)]) == 0
    assert load_interval_calibration(sd_only).scales != calibration.scales  # same slices, another interval


@pytest.mark.slow
def test_train_map_quantile_head_command_writes_loadable_weights(tmp_path: Path) -> None:
    """One slice per acceleration of the shipped t2prep recipe (64^2 at 1, 2, 4x), one epoch: the weights load."""
    out = tmp_path / "run"
    words = ["train", "map-quantile-head", "--chain", "t2prep", "--slices", "1", "--epochs", "1", "--hidden", "4"]
    assert main([*words, "--out", str(out), "--quiet"]) == 0
    head = load_map_quantile_head(out / WEIGHTS_NAME)
    assert (head.quantity, head.hidden, head.alpha) == ("T2", 4, 0.1)
    training = torch.load(out / WEIGHTS_NAME, weights_only=True)["training"]
    assert training["accelerations"] == [1, 2, 4]
    assert (training["recipe"]["seed"], training["recipe"]["n_slices"], training["recipe"]["matrix"]) == (
        HEAD_TRAINING_SEED,
        1,
        64,
    )
    assert sorted(p.name for p in out.glob("training_R*.npz")) == [
        "training_R1.npz",
        "training_R2.npz",
        "training_R4.npz",
    ]


def test_replay_provenance_is_the_same_in_another_process() -> None:
    """Kept maps are reused across runs only if a new process describes the same replay identically."""
    data = CalibrationData(matrix=32, n_slices=4)
    here = replay_provenance(map_chain("t1_molli_puq"), data, 8)
    code = (
        "from gadgets.calibration_run import CalibrationData, map_chain, replay_provenance; "
        "print(replay_provenance(map_chain('t1_molli_puq'), CalibrationData(matrix=32, n_slices=4), 8))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there == here
    assert here != replay_provenance(map_chain("t1_molli_puq"), data, 6)
    assert here != replay_provenance(map_chain("t2prep_puq"), data, 8)


def test_replay_provenance_changes_with_the_weights_behind_a_name(tmp_path: Path) -> None:
    """A network retrained and saved under the same path makes other maps: kept maps of the old one are not reused."""
    weights = tmp_path / "recon.pt"
    chain = map_chain("t1_molli_puq")
    stages = tuple(
        dataclasses.replace(s, config=dataclasses.replace(s.config, weights=str(weights)))
        if isinstance(s.config, PuqReconConfig)
        else s
        for s in chain.chain.stages
    )
    site = dataclasses.replace(chain, chain=dataclasses.replace(chain.chain, stages=stages))
    data = CalibrationData(matrix=32, n_slices=4)
    shutil.copy(weights_path("recon", "t1"), weights)
    before = replay_provenance(site, data, 8)
    shutil.copy(weights_path("recon", "t2"), weights)
    assert replay_provenance(site, data, 8) != before
