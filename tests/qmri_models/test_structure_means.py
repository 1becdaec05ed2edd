"""The structures a structure-level interval is calibrated on: classified on the map, measured beside the truth."""

import numpy as np

from qmri_models.calibration.risk_control import calibrate_interval_scale
from qmri_models.structures.classify import classes_for
from qmri_models.structures.means import structure_means


def two_tissue_slices(n_slices: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Slices `(n, 32, 32)` of a 900 ms left half and a 1500 ms right half, maps off by a slice-wide bias."""
    truth = np.zeros((n_slices, 32, 32))
    truth[:, :, :16] = 900.0
    truth[:, :, 16:] = 1500.0
    truth[:, :4] = 0.0  # background rows: not kept
    bias = rng.normal(0.0, 30.0, size=(n_slices, 1, 1))
    value = np.where(truth > 0, truth + bias + rng.normal(0.0, 20.0, truth.shape), 0.0)
    sd = np.where(truth > 0, 20.0, 0.0)
    return value, sd, truth


def test_each_class_is_measured_with_the_truth_over_its_own_pixels() -> None:
    value, sd, truth = two_tissue_slices(3, np.random.default_rng(0))
    means = structure_means(value, sd, truth, value > 0, class_names=("white_matter", "grey_matter"))
    assert means.value.shape == (3, 2)
    assert all(names == ("white_matter", "grey_matter") for names in means.names)
    assert ((means.pixels > 0.98 * 16 * 28) & (means.pixels <= 16 * 28)).all()  # a rare pixel is an outlier
    np.testing.assert_allclose(means.truth, [[900.0, 1500.0]] * 3)
    np.testing.assert_allclose(means.sd, 20.0)
    for i in range(3):
        np.testing.assert_allclose(means.value[i], [value[i, 4:, :16].mean(), value[i, 4:, 16:].mean()], rtol=2e-3)
    assert means.valid.all()


def test_small_structures_are_left_out_and_rows_padded() -> None:
    value, sd, truth = two_tissue_slices(2, np.random.default_rng(1))
    value[1, 8:, 16:] = 0.0  # slice 1 keeps 64 grey matter pixels: fewer than min_pixels
    means = structure_means(value, sd, truth, value > 0, class_names=("white_matter", "grey_matter"), min_pixels=100)
    assert means.names[0][:2] == ("white_matter", "grey_matter")
    assert means.names[1][0] == "white_matter"
    assert "grey_matter" not in means.names[1]
    assert means.value.shape[1] == len(means.names[0])
    assert not means.valid[1, len(means.names[1]) :].any()
    assert means.truth[1, 0] == 900.0


def test_a_structure_scale_covers_the_bias_the_voxel_sd_does_not_hold() -> None:
    """The slice-wide bias (SD 30 ms) is not in the voxel SD (20 ms): lambda grows past 1 to cover it."""
    value, sd, truth = two_tissue_slices(60, np.random.default_rng(2))
    means = structure_means(value, sd, truth, value > 0, class_names=("white_matter", "grey_matter"))
    lambdas = np.round(np.arange(0, 1001) * 0.01, 2)
    calibration = calibrate_interval_scale(
        means.value, means.truth, means.sd, means.sd, lambdas, alpha=0.2, delta=0.1, mask=means.valid
    )
    assert 1.0 < calibration.scale < 6.0
    covered = np.abs(means.value - means.truth) <= calibration.scale * means.sd
    assert covered[means.valid].mean() >= 0.8


def test_a_t2_map_alone_gets_classes_named_in_order_of_t2() -> None:
    assert classes_for("T1") == ("fat", "white_matter", "grey_matter", "csf")
    assert classes_for("T2") == ("white_matter", "grey_matter_and_fat", "long_t2", "csf")
