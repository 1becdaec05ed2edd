"""The width-error metrics of qmri_models.calibration.evaluation against direct numpy and scipy computations."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import pearsonr, spearmanr

from qmri_models.calibration.evaluation import (
    error_correlation,
    masked_blur,
    patch_means,
    patch_slices,
    pearson,
    spearman,
    structure_error,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_and_spearman_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=200)
    b = 0.5 * a + rng.normal(size=200)
    b[:20] = np.round(b[:20])  # ties for the ranks
    assert pearson(a, b) == pytest.approx(pearsonr(a, b).statistic, abs=1e-12)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_correlations_of_a_constant_or_a_single_value_are_undefined():
    assert pearson(np.ones(5), np.arange(5.0)) is None
    assert spearman(np.arange(5.0), np.full(5, 2.0)) is None
    assert pearson(np.array([1.0]), np.array([2.0])) is None


def test_masked_blur_is_the_blur_normalised_to_the_mask():
    rng = np.random.default_rng(3)
    values = rng.uniform(1.0, 2.0, size=(24, 20))
    mask = np.zeros((24, 20), dtype=bool)
    mask[4:18, 3:15] = True
    values[~mask] = 1e6  # must not leak into the mask
    expected = gaussian_filter(np.where(mask, values, 0.0), 2.0) / gaussian_filter(mask.astype(float), 2.0)
    blurred = masked_blur(values, mask, 2.0)
    np.testing.assert_allclose(blurred[mask], expected[mask], rtol=1e-12)
    assert (blurred[~mask] == 0).all()
    assert blurred[mask].max() <= 2.0


def test_masked_blur_of_a_full_mask_is_gaussian_filter():
    values = np.random.default_rng(4).normal(size=(16, 16))
    np.testing.assert_allclose(masked_blur(values, np.ones((16, 16), dtype=bool)), gaussian_filter(values, 2.0))


def test_patches_tile_a_20x20_image_in_2x2_blocks():
    patches = patch_slices((20, 20), 10)
    assert len(patches) == 100
    assert patches[0] == (slice(0, 2), slice(0, 2))
    assert patches[11] == (slice(2, 4), slice(2, 4))
    cover = np.zeros((20, 20), dtype=int)
    for y, x in patches:
        cover[y, x] += 1
    assert (cover == 1).all()


def test_patches_of_an_uneven_image_differ_by_at_most_one_pixel():
    sizes = {(y.stop - y.start, x.stop - x.start) for y, x in patch_slices((64, 64), 10)}
    assert sizes <= {(6, 6), (6, 7), (7, 6), (7, 7)}


def test_patch_means_of_a_hand_made_20x20_image():
    values = np.arange(400.0).reshape(20, 20)
    mask = np.ones((20, 20), dtype=bool)
    mask[0, 0] = False  # the first patch keeps 3 pixels: 1, 20, 21
    mask[2:4, 4:6] = False  # patch (1, 2) keeps none and drops out
    means = patch_means(values, mask, 10)
    assert means.shape == (99,)
    assert means[0] == pytest.approx((1 + 20 + 21) / 3)
    assert means[1] == pytest.approx((2 + 3 + 22 + 23) / 4)
    assert means[-1] == pytest.approx((378 + 379 + 398 + 399) / 4)


def test_error_correlation_of_a_width_proportional_to_the_error_is_one():
    rng = np.random.default_rng(5)
    error = np.abs(rng.normal(size=(20, 20))) + np.linspace(0, 3, 20)[None, :]
    mask = np.ones((20, 20), dtype=bool)
    mask[:3] = False
    result = error_correlation(3.0 * error, error, mask)
    for value in (result.pearson, result.spearman, result.patch_mean_pearson, result.patch_mean_spearman):
        assert value == pytest.approx(1.0)
    assert result.region_pearson == pytest.approx(1.0)


def test_error_correlation_follows_the_direct_computation():
    rng = np.random.default_rng(6)
    error = np.abs(rng.normal(size=(20, 20)))
    width = error + rng.uniform(0, 2, size=(20, 20))
    mask = rng.uniform(size=(20, 20)) > 0.2
    result = error_correlation(width, error, mask)
    norm = gaussian_filter(mask.astype(float), 2.0)
    q = gaussian_filter(np.where(mask, width, 0), 2.0) / norm
    e = gaussian_filter(np.where(mask, error, 0), 2.0) / norm
    assert result.pearson == pytest.approx(pearsonr(q[mask], e[mask]).statistic)
    assert result.spearman == pytest.approx(spearmanr(q[mask], e[mask]).statistic)
    regions = [
        pearsonr(q[y, x][mask[y, x]], e[y, x][mask[y, x]]).statistic
        for y in (slice(i, i + 2) for i in range(0, 20, 2))
        for x in (slice(j, j + 2) for j in range(0, 20, 2))
        if mask[y, x].sum() >= 3
    ]
    assert result.region_pearson == pytest.approx(np.mean(regions))
    q_means = [q[y, x][mask[y, x]].mean() for y, x in patch_slices((20, 20), 10) if mask[y, x].any()]
    e_means = [e[y, x][mask[y, x]].mean() for y, x in patch_slices((20, 20), 10) if mask[y, x].any()]
    assert result.patch_mean_pearson == pytest.approx(pearsonr(q_means, e_means).statistic)


def test_structure_error_is_the_difference_of_means_and_the_mean_sd():
    value = np.array([[10.0, 12.0], [30.0, 0.0]])
    truth = np.array([[11.0, 11.0], [20.0, 5.0]])
    sd = np.array([[1.0, 3.0], [9.0, 9.0]])
    structure = np.array([[True, True], [False, False]])
    result = structure_error(value, truth, sd, structure)
    assert (result.n_pixels, result.mean_error, result.mean_sd) == (2, 0.0, 2.0)
    with pytest.raises(ValueError, match="no pixel"):
        structure_error(value, truth, sd, np.zeros((2, 2), dtype=bool))


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="mask must be bool"):
        masked_blur(np.ones((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="per_side"):
        patch_slices((8, 8), 10)
