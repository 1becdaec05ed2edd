"""The plausibility step and the mask's island removal against hand-made arrays."""

import numpy as np
import pytest

from qmri_models.fitting.guided import fit_guided_maps, phase_weights
from qmri_models.fitting.maps import MIN_ISLAND_PIXELS, SliceMaps, fit_maps, fit_mask, remove_islands
from qmri_models.fitting.plausibility import (
    MAX_T1_MS,
    PLAUSIBLE_MAXIMA,
    Rejection,
    bounded,
    describe_rejections,
    plausible_maps,
    rejection_counts,
)
from qmri_models.protocols import MOLLI_TI_MS
from qmri_models.signal_models import MODELS, signal_model

NAN = np.nan


def hand_made_maps() -> SliceMaps:
    """A 2x4 T1 map (ms) with an amplitude map: one pixel of every kind, the last column outside the mask.

    Row 0: kept, negative, above 5000, not finite (outside). Row 1: not converged, SD 7000, kept, zero.
    """
    t1 = np.array([[1000.0, -5.0, 6000.0, 0.0], [1200.0, 800.0, 900.0, 0.0]], np.float32)
    t1_sd = np.array([[50.0, 40.0, 300.0, 0.0], [60.0, 7000.0, 45.0, 0.0]], np.float32)
    amplitude = np.array([[1.0, 0.9, 0.8, 0.0], [1.1, 1.2, 1.3, 0.0]], np.float32)
    amplitude_sd = np.full((2, 4), 0.01, np.float32)
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    t1[1, 3] = 0.0  # fitted, T1 exactly zero (MOLLI's A = 0 fit)
    t1_sd[1, 3] = 20.0
    amplitude_sd[:, 3] = [0.0, 0.01]
    amplitude[0, 2] = NAN  # the pixel above 5000 is also not finite in A
    return SliceMaps(
        values={"T1": t1, "A": amplitude},
        sds={"T1": t1_sd, "A": amplitude_sd},
        units={"T1": "ms", "A": "a.u."},
        mask=mask,
        converged=np.array([[True, True, True, False], [False, True, True, True]]),
    )


def test_implausible_pixels_are_zero_with_their_sd_marked_and_the_reasons_kept() -> None:
    maps = plausible_maps(hand_made_maps())
    expected_flags = np.array(
        [
            [0, Rejection.NOT_POSITIVE, Rejection.ABOVE_MAXIMUM | Rejection.NOT_FINITE, 0],
            [Rejection.NOT_CONVERGED, Rejection.UNCERTAIN, 0, Rejection.NOT_POSITIVE],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(maps.rejected, expected_flags)
    rejected = expected_flags != 0
    np.testing.assert_array_equal(maps.kept, maps.mask & ~rejected)
    # values: zero where rejected or outside the mask, the fit's elsewhere
    np.testing.assert_array_equal(maps.values["T1"], [[1000.0, 0.0, 0.0, 0.0], [0.0, 0.0, 900.0, 0.0]])
    np.testing.assert_array_equal(maps.values["A"], np.float32([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.3, 0.0]]))
    # SDs: the checked map's rejected pixels marked at the maximum; the unchecked map's zero; background zero
    np.testing.assert_array_equal(maps.sds["T1"], [[50.0, 5000.0, 5000.0, 0.0], [5000.0, 5000.0, 45.0, 5000.0]])
    np.testing.assert_array_equal(maps.sds["A"], np.float32([[0.01, 0.0, 0.0, 0.0], [0.0, 0.0, 0.01, 0.0]]))
    assert all(v.dtype == np.float32 for v in (*maps.values.values(), *maps.sds.values()))
    assert dict(maps.maxima) == {"T1": MAX_T1_MS}  # T2 is not among the maps: not checked, not listed


def test_rejections_are_counted_per_reason_and_described() -> None:
    maps = plausible_maps(hand_made_maps())
    assert maps.rejected is not None
    assert rejection_counts(maps.rejected) == {
        "zero or negative": 2,
        "above the maximum": 1,
        "not finite": 1,
        "not converged": 1,
        "SD above the maximum": 1,
    }
    assert describe_rejections(maps) == (
        "5 of 7 fitted pixels rejected (T1 max 5000): 2 zero or negative, 1 above the maximum, 1 not finite, "
        "1 not converged, 1 SD above the maximum"
    )
    assert describe_rejections(hand_made_maps()) == "7 fitted pixels, not checked for plausibility"


def test_kept_sds_are_clamped_and_a_lower_maximum_rejects_more() -> None:
    maps = plausible_maps(hand_made_maps(), {"T1": 950.0, "T2": 100.0})
    assert maps.rejected is not None
    assert maps.rejected[0, 0] == Rejection.ABOVE_MAXIMUM  # 1000 ms > 950 ms
    np.testing.assert_array_equal(maps.values["T1"][1], [0.0, 0.0, 900.0, 0.0])
    assert float(maps.sds["T1"].max()) == 950.0
    kept = maps.kept
    assert kept.sum() == 1
    assert 0.0 <= float(maps.sds["T1"][kept].max()) <= 950.0


@pytest.mark.parametrize("maximum", [0.0, -1.0, np.inf, np.nan])
def test_maximum_must_be_positive_and_finite(maximum: float) -> None:
    with pytest.raises(ValueError, match="plausible maximum of T1 must be positive and finite"):
        plausible_maps(hand_made_maps(), {"T1": maximum})


def test_defaults_are_gadgetron_like() -> None:
    assert dict(PLAUSIBLE_MAXIMA) == {"T1": 5000.0, "T2": 2500.0}


def test_bounded_clamps_samples_into_the_range() -> None:
    values = np.array([-3.0, 0.0, 1200.0, 6000.0, np.nan, np.inf, -np.inf])
    np.testing.assert_array_equal(bounded(values, 5000.0), [0.0, 0.0, 1200.0, 5000.0, 5000.0, 5000.0, 0.0])


def test_fit_maps_stay_unchecked_until_the_step() -> None:
    """``fit_maps`` reports the fit as it ended (bench and tests compare it with curve_fit); the step is separate."""
    images = np.zeros((8, 4, 4))
    images[:, 1:3, 1:3] = np.abs(MODELS["molli"].signal_array(np.asarray(MOLLI_TI_MS), a=1.0, b=1.9, t1_star_ms=900.0))[
        :, None, None
    ]
    maps = fit_maps(MODELS["molli"], images, np.asarray(MOLLI_TI_MS), mask_threshold=0.1, min_island_pixels=1)
    assert maps.rejected is None
    assert maps.maxima == {}
    np.testing.assert_array_equal(maps.kept, maps.mask)
    assert maps.mask.sum() == 4


def test_islands_smaller_than_the_minimum_are_removed_8_connected() -> None:
    mask = np.zeros((12, 12), bool)
    mask[1:6, 1:6] = True  # 25 pixels
    mask[8, 8] = mask[9, 9] = True  # a diagonal pair: one island of 2 (8-connected)
    mask[8:10, 1:4] = True  # 6 pixels
    mask[11, 11] = True  # 1 pixel
    kept = remove_islands(mask, 6)
    expected = np.zeros_like(mask)
    expected[1:6, 1:6] = True
    expected[8:10, 1:4] = True
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(remove_islands(mask, 2), mask & ~(np.arange(12)[:, None] == 11))
    np.testing.assert_array_equal(remove_islands(mask, 1), mask)
    np.testing.assert_array_equal(remove_islands(mask, 26), np.zeros_like(mask))
    assert not remove_islands(np.zeros((0, 0), bool), 5).size


def test_island_minimum_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_pixels must be at least 1, got 0"):
        remove_islands(np.ones((3, 3), bool), 0)


def test_fit_mask_drops_a_lone_bright_pixel_but_keeps_the_object() -> None:
    images = np.zeros((3, 32, 32))
    images[:, 8:24, 8:24] = 1.0  # 256 pixels
    images[:, 2, 29] = 1.0  # a noise spike
    mask = fit_mask(images, 0.5, MIN_ISLAND_PIXELS)
    assert mask.sum() == 256
    assert not mask[2, 29]
    assert fit_mask(images, 0.5, 1)[2, 29]


def test_guided_maps_reject_implausible_pixels_and_clamp_every_sample_first() -> None:
    """PUQ's fit: a pixel at 8000 ms is rejected; at 4900 ms the samples above 5000 count at 5000 in the spread."""
    model = signal_model("molli")
    times = np.asarray(MOLLI_TI_MS)
    t1 = np.array([[1000.0, 8000.0], [4900.0, 1500.0]])
    clean = np.abs(model.signal_array(times, a=np.ones_like(t1), b=2.0 * np.ones_like(t1), t1_star_ms=t1))
    samples = clean[None] * (1 + 0.02 * np.random.default_rng(3).standard_normal((8, 8, 2, 2)))
    mean, sd = samples.mean(axis=0), samples.std(axis=0)
    maps = fit_guided_maps(model, mean, sd, samples, times, mask_threshold=0.0, min_island_pixels=1)
    assert maps.rejected is not None
    np.testing.assert_array_equal(maps.rejected, [[0, Rejection.ABOVE_MAXIMUM], [0, 0]])
    assert maps.values["T1"][0, 1] == 0.0
    assert maps.sds["T1"][0, 1] == MAX_T1_MS
    np.testing.assert_allclose(maps.values["T1"][maps.kept], [1000.0, 4900.0, 1500.0], rtol=0.02)
    weights = phase_weights(mean, sd)
    each = np.stack([fit_maps(model, s, times, mask=maps.mask, weights=weights).values["T1"] for s in samples])
    assert (each[:, 1, 0] > MAX_T1_MS).any()  # some samples of the 4900 ms pixel fit above the maximum
    np.testing.assert_allclose(maps.sds["T1"][1, 0], bounded(each[:, 1, 0], MAX_T1_MS).std(), rtol=1e-4)
    assert maps.sds["T1"][1, 0] < each[:, 1, 0].std()


def test_an_sd_beyond_float32_becomes_infinite_and_its_pixel_is_rejected() -> None:
    """A flat signal under saturation recovery fits T1 near its lower bound, where the signal hardly depends on T1:
    its SD passes float32's range. The map holds inf (no overflow warning) and the plausibility step rejects it."""
    times = np.array([10000.0, 100.0, 175.0, 250.0, 325.0, 400.0, 475.0, 550.0, 625.0, 700.0])
    images = 1.0 + 0.01 * np.random.default_rng(0).standard_normal((10, 4, 4))
    maps = fit_maps(MODELS["saturation_recovery"], images, times, mask=np.ones((4, 4), bool))
    overflowed = np.isinf(maps.sds["T1"])
    assert overflowed.any()
    checked = plausible_maps(maps, {"T1": MAX_T1_MS})
    assert (checked.rejected[overflowed] & Rejection.NOT_FINITE).all()
    np.testing.assert_array_equal(checked.sds["T1"][overflowed], MAX_T1_MS)
