"""Calibration files: the ``IntervalCalibration`` JSON round trip, its validation (each bad field named),
``scale_for``'s exact lookup, the atomic save, and loading by shipped name or path."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qmri_models.calibration.files import (
    SHIPPED_DIR,
    IntervalCalibration,
    calibration_id,
    load_interval_calibration,
    save_interval_calibration,
    shipped_calibrations,
)
from qmri_models.calibration.risk_control import Calibration, calibrate_scale

LAMBDAS = np.round(np.arange(0.0, 4.0 + 1e-9, 0.05), 2)


def calibration_at(acceleration: int) -> Calibration:
    """Return a real RCPS calibration on losses that fall with lambda, wider for higher ``acceleration``."""
    rng = np.random.default_rng(acceleration)
    required = rng.exponential(0.2 * acceleration, size=(80, 200))
    losses = (required[:, :, None] > LAMBDAS).mean(axis=1)
    return calibrate_scale(losses, LAMBDAS, alpha=0.1, delta=0.1)


def good() -> IntervalCalibration:
    return IntervalCalibration(
        id=calibration_id("t1_molli", "fit_sd", 0.1, 0.1),
        chain="t1_molli",
        quantity="T1",
        uncertainty="fit_sd",
        alpha=0.1,
        delta=0.1,
        bound="wsr",
        scales={a: calibration_at(a) for a in (1, 2, 4)},
        recipe={"matrix": 64, "n_coils": 8, "snr": 50.0, "seeds": [100000, 100001]},
        command="qmri calibrate --chain t1_molli",
    )


def test_id_names_chain_uncertainty_alpha_and_delta() -> None:
    assert good().id == "t1_molli-fit_sd-a0.1-d0.1"
    assert (
        calibration_id("t1_molli_puq", "mc_sd", 0.1, 0.05, quantile_head=True)
        == "t1_molli_puq-mc_sd-quantiles-a0.1-d0.05"
    )


def test_quantile_head_is_optional_in_files_and_round_trips() -> None:
    data = good().to_dict()
    assert data["quantile_head"] is None
    del data["quantile_head"]  # files written before quantile heads
    assert IntervalCalibration.from_dict(data).quantile_head is None
    with_head = dataclasses.replace(good(), quantile_head="t1_molli_puq")
    assert IntervalCalibration.from_dict(json.loads(json.dumps(with_head.to_dict()))) == with_head
    with pytest.raises(ValueError, match="'quantile_head' must be a non-empty string"):
        dataclasses.replace(good(), quantile_head="")


def test_round_trip_through_json_text(tmp_path: Path) -> None:
    calibration = good()
    data = json.loads(json.dumps(calibration.to_dict()))
    assert sorted(data["scales"]) == ["1", "2", "4"]
    back = IntervalCalibration.from_dict(data)
    assert back == calibration
    assert back.scale_for(2) == calibration.scales[2]
    path = tmp_path / "sub" / "cal.json"
    save_interval_calibration(calibration, path)
    assert load_interval_calibration(path) == calibration
    assert load_interval_calibration(str(path)) == calibration
    assert [p.name for p in path.parent.iterdir()] == ["cal.json"]


def test_scale_for_is_exact_and_names_the_calibrated_ones() -> None:
    calibration = good()
    assert calibration.scale_for(4).scale > calibration.scale_for(1).scale
    assert calibration.accelerations == (1, 2, 4)
    with pytest.raises(ValueError, match=r"no scale for acceleration 3; it was calibrated at \[1, 2, 4\]"):
        calibration.scale_for(3)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"id": ""}, "'id' must be a non-empty string"),
        ({"id": "t1 molli"}, "'id' must match"),
        ({"chain": 3}, "'chain' must be a non-empty string"),
        ({"command": None}, "'command' must be a non-empty string"),
        ({"quantity": "PD"}, "'quantity' must be one of"),
        ({"uncertainty": "mc"}, "'uncertainty' must be one of"),
        ({"alpha": 0.0}, "'alpha' must be a number in"),
        ({"delta": "0.1"}, "'delta' must be a number in"),
        ({"bound": "chernoff"}, "'bound' must be one of"),
        ({"alpha": 0.2}, "acceleration 1 has alpha 0.1, the file 0.2"),
        ({"bound": "bentkus"}, "acceleration 1 has bound 'wsr'"),
        ({"quantile_head": 3}, "'quantile_head' must be a non-empty string"),
        ({"scales": {}}, "'scales' must be a non-empty dict"),
        ({"scales": []}, "'scales' must be an object with string keys"),
        ({"scales": {"x": {}}}, "acceleration keys that are integers >= 1, got 'x'"),
        ({"scales": {"0": {}}}, "acceleration keys that are integers >= 1, got 0"),
        ({"scales": {"1": {"scale": 1.0}}}, r"'scales' at acceleration 1: calibration dict: missing keys"),
        ({"scales": {"1": 1.0}}, r"'scales' at acceleration 1 must be an object"),
        ({"recipe": [1]}, "'recipe' must be an object with string keys"),
        ({"recipe": {"snr": float("nan")}}, "'recipe' must be JSON-able"),
        ({"lambda": 1.0}, r"unknown fields \['lambda'\]"),
    ],
)
def test_from_dict_names_the_bad_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IntervalCalibration.from_dict({**good().to_dict(), **changes})


def test_from_dict_names_missing_fields() -> None:
    data = good().to_dict()
    del data["recipe"]
    with pytest.raises(ValueError, match=r"missing fields \['recipe'\]"):
        IntervalCalibration.from_dict(data)


def test_load_names_the_file_of_a_bad_calibration_and_lists_shipped_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**good().to_dict(), "quantity": "PD"}))
    with pytest.raises(ValueError, match=rf"{bad}: .*'quantity'"):
        load_interval_calibration(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=str(bad)):
        load_interval_calibration(bad)
    with pytest.raises(FileNotFoundError, match="give a shipped name"):
        load_interval_calibration(tmp_path / "absent.json")


def test_shipped_calibrations_are_the_json_files_of_the_shipped_folder() -> None:
    assert shipped_calibrations() == {p.stem: p for p in SHIPPED_DIR.glob("*.json")}
