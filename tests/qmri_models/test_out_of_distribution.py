"""Out-of-distribution thresholds: the conformal flag rate holds on exchangeable scores, and the record round-trips."""

import json

import numpy as np
import pytest

from qmri_models.calibration.out_of_distribution import (
    OutOfDistribution,
    conformal_threshold,
    disagreement_scores,
    structure_flagged,
)


def test_scores_are_the_relative_distance_to_the_model_fit() -> None:
    scores = disagreement_scores(np.array([100.0, 200.0, 0.0]), np.array([110.0, 150.0, 5.0]))
    np.testing.assert_allclose(scores[:2], [0.1, 0.25])
    assert scores[2] == np.inf  # a pixel the learned fit did not keep is never in distribution


def test_conformal_threshold_flags_at_most_the_level_of_new_in_distribution_scores() -> None:
    """Over many calibration draws, the flag rate of fresh exchangeable scores averages at most the level."""
    rng = np.random.default_rng(0)
    level = 0.05
    rates = []
    for _ in range(400):
        calibration = rng.lognormal(size=99)
        threshold = conformal_threshold(calibration, level)
        rates.append(float((rng.lognormal(size=2000) > threshold).mean()))
    assert np.mean(rates) <= level
    assert np.mean(rates) > 0.5 * level  # and not trivially conservative: (n + 1)(1 - level) = 95 of 99


def test_conformal_threshold_is_the_right_order_statistic_and_refuses_too_few_scores() -> None:
    assert conformal_threshold(np.arange(1.0, 20.0), 0.1) == 18.0  # ceil(20 * 0.9) = 18th of 19
    with pytest.raises(ValueError, match=r"9 scores are too few for a level of 0\.01: need at least 99"):
        conformal_threshold(np.arange(9.0), 0.01)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        conformal_threshold(np.arange(9.0), 1.0)
    assert conformal_threshold(np.arange(99.0), 0.01) == 98.0  # 99 scores suffice: the largest


def test_record_round_trips_through_json_and_flags_by_acceleration() -> None:
    ood = OutOfDistribution(level=0.01, thresholds={6: 0.05, 8: 0.08})
    back = OutOfDistribution.from_dict(json.loads(json.dumps(ood.to_dict())))
    assert back == ood
    flags = back.flags(np.array([100.0, 100.0]), np.array([93.0, 110.0]), 8)
    np.testing.assert_array_equal(flags, [False, True])
    with pytest.raises(ValueError, match=r"no out-of-distribution threshold at acceleration 4; calibrated at \[6, 8\]"):
        back.flags(np.ones(2), np.ones(2), 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"level": 0.01}, "must be an object with level and thresholds"),
        ({"level": 1.5, "thresholds": {"4": 0.1}}, "'level' must be a number in"),
        ({"level": 0.01, "thresholds": {}}, "'thresholds' must be a non-empty object"),
        ({"level": 0.01, "thresholds": {"x": 0.1}}, "acceleration keys >= 1"),
        ({"level": 0.01, "thresholds": {"4": -1.0}}, "threshold at 4 must be finite and >= 0"),
    ],
)
def test_bad_records_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutOfDistribution.from_dict(data)


def test_a_structure_is_flagged_when_more_than_a_quarter_of_it_is() -> None:
    structure = np.zeros((4, 4), bool)
    structure[:2] = True  # 8 pixels
    flags = np.zeros((4, 4), bool)
    flags[0, :2] = True  # 2 of 8: a quarter, not more
    assert not structure_flagged(flags, structure)
    flags[0, 2] = True
    assert structure_flagged(flags, structure)
    assert not structure_flagged(flags, np.zeros((4, 4), bool))
