"""Structure-level measurements against truth: tissue classes, phantom ROIs, volumes, statistics over samples."""

import dataclasses
import json
import re

import numpy as np
import pytest

from qmri_models.simulation.anatomy import NIST_T1_MS, brain_slice, sphere_phantom
from qmri_models.simulation.tissues import TISSUE_CLASSES, ParameterMaps
from qmri_models.structures.classify import BRAIN_CLASSES, HEAD_CLASSES, TissueClasses, classify_tissues
from qmri_models.structures.geometry import SliceGeometry
from qmri_models.structures.rois import (
    SPHERE_MARGIN_MM,
    Circle,
    Roi,
    circle_rois,
    rois_from_labels,
    sphere_phantom_circles,
    sphere_phantom_rois,
)
from qmri_models.structures.statistics import structure_statistics

MATRIX = 64
FOV_MM = 220.0
GEOMETRY = SliceGeometry.square(FOV_MM, MATRIX, 8.0)
SEEDS = range(10)
FAT = TISSUE_CLASSES.index("fat")
LESION = TISSUE_CLASSES.index("lesion")


@pytest.fixture(scope="module")
def slices() -> list[ParameterMaps]:
    return [brain_slice(MATRIX, np.random.default_rng(seed)) for seed in SEEDS]


def agreement(classes: TissueClasses, truth: ParameterMaps, tissue: str) -> tuple[float, float]:
    """Fraction of the truth's tissue pixels given that class, and the Dice overlap of the two."""
    ours = classes.labels == classes.label_names.index(tissue)
    theirs = truth.labels == TISSUE_CLASSES.index(tissue)
    both = np.count_nonzero(ours & theirs)
    return both / np.count_nonzero(theirs), 2 * both / (np.count_nonzero(ours) + np.count_nonzero(theirs))


# --- tissue classes ----------------------------------------------------------------------------------------------


# Measured on seeds 0..99 of 64^2 slices (classify_tissues on the true maps, mask = every non-background pixel):
# white and grey matter sensitivity 1.000 and Dice >= 0.994 in every slice, T1 alone or T1 and T2; 0.99 leaves room.
@pytest.mark.parametrize("with_t2", [False, True])
def test_classes_of_the_true_maps_agree_with_the_simulator(slices: list[ParameterMaps], with_t2: bool):
    for truth in slices:
        classes = classify_tissues(truth.t1_ms, truth.t2_ms if with_t2 else None, mask=truth.labels > 0)
        assert classes.label_names == ("outside", *HEAD_CLASSES, "outlier")
        np.testing.assert_array_equal(classes.labels == 0, truth.labels == 0)
        for tissue in ("white_matter", "grey_matter", "csf"):
            sensitivity, dice = agreement(classes, truth, tissue)
            assert sensitivity >= 0.99, (tissue, sensitivity)
            assert dice >= 0.99, (tissue, dice)
        assert np.all(np.diff(classes.class_t1_ms) > 0)
        assert (classes.class_t2_ms is not None) == with_t2


def test_class_means_are_the_tissue_means(slices: list[ParameterMaps]):
    truth = slices[0]
    classes = classify_tissues(truth.t1_ms, truth.t2_ms, mask=truth.labels > 0)
    assert classes.class_t2_ms is not None
    for k, tissue in enumerate(HEAD_CLASSES):
        inside = truth.labels == TISSUE_CLASSES.index(tissue)
        assert classes.class_t1_ms[k] == pytest.approx(np.exp(np.log(truth.t1_ms[inside]).mean()), rel=0.01)
        assert classes.class_t2_ms[k] == pytest.approx(np.exp(np.log(truth.t2_ms[inside]).mean()), rel=0.01)


# Measured on seeds 0..39 of 96^2 slices with up to 8 lesions: 0.98 of the 827 lesion pixels flagged with T1 and T2
# (0.65 with T1 alone: lesion T1 overlaps grey matter's), no healthy pixel flagged.
def test_lesions_are_outliers_with_t1_and_t2():
    flagged = total = 0
    for seed in range(6):
        truth = brain_slice(96, np.random.default_rng(seed), max_lesions=8)
        classes = classify_tissues(truth.t1_ms, truth.t2_ms, mask=truth.labels > 0)
        lesion = truth.labels == LESION
        flagged += np.count_nonzero(classes.labels[lesion] == classes.outlier_label)
        total += np.count_nonzero(lesion)
        healthy = (truth.labels > 0) & ~lesion
        assert np.count_nonzero(classes.labels[healthy] == classes.outlier_label) <= 0.005 * np.count_nonzero(healthy)
    assert total > 50
    assert flagged / total >= 0.9


def test_brain_classes_inside_a_brain_mask(slices: list[ParameterMaps]):
    for truth in slices[:4]:
        brain = (truth.labels > 0) & (truth.labels != FAT)
        classes = classify_tissues(truth.t1_ms, mask=brain, class_names=BRAIN_CLASSES)
        assert classes.label_names == ("outside", *BRAIN_CLASSES, "outlier")
        for tissue in BRAIN_CLASSES:
            assert agreement(classes, truth, tissue)[0] >= 0.99


# Measured on seeds 0..99 with 5 % multiplicative Gaussian noise on T1: white and grey matter sensitivity >= 0.93,
# Dice >= 0.91 in every slice (mean 0.996).
def test_classes_of_noisy_maps(slices: list[ParameterMaps]):
    for seed, truth in enumerate(slices[:5]):
        rng = np.random.default_rng(100 + seed)
        noisy = truth.t1_ms * (1 + 0.05 * rng.standard_normal(truth.t1_ms.shape))
        classes = classify_tissues(noisy, mask=truth.labels > 0)
        for tissue in ("white_matter", "grey_matter"):
            sensitivity, dice = agreement(classes, truth, tissue)
            assert sensitivity >= 0.9, (tissue, sensitivity)
            assert dice >= 0.88, (tissue, dice)


def test_classification_is_deterministic_for_a_seed(slices: list[ParameterMaps]):
    rng = np.random.default_rng(7)
    noisy = slices[1].t1_ms * (1 + 0.1 * rng.standard_normal(slices[1].t1_ms.shape))
    mask = slices[1].labels > 0
    first = classify_tissues(noisy, mask=mask, seed=3)
    second = classify_tissues(noisy, mask=mask, seed=3)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.class_t1_ms == second.class_t1_ms


def test_default_mask_is_the_positive_finite_pixels(slices: list[ParameterMaps]):
    truth = slices[2]
    t1 = truth.t1_ms.copy()
    t1[0, 0] = np.nan
    classes = classify_tissues(t1)
    np.testing.assert_array_equal(classes.labels > 0, truth.labels > 0)


def test_classify_rejects_bad_input(slices: list[ParameterMaps]):
    truth = slices[0]
    with pytest.raises(ValueError, match=re.escape("(64, 64) and (64, 63)")):
        classify_tissues(truth.t1_ms, truth.t2_ms[:, 1:])
    with pytest.raises(ValueError, match=re.escape("shape (64, 64), got bool (32, 64)")):
        classify_tissues(truth.t1_ms, mask=truth.labels[:32] > 0)
    with pytest.raises(ValueError, match="2D map"):
        classify_tissues(truth.t1_ms[None])
    with pytest.raises(ValueError, match="not positive and finite"):
        classify_tissues(truth.t1_ms, mask=np.ones((MATRIX, MATRIX), dtype=bool))
    with pytest.raises(ValueError, match="outlier_p"):
        classify_tissues(truth.t1_ms, outlier_p=1.0)
    with pytest.raises(ValueError, match="distinct"):
        classify_tissues(truth.t1_ms, class_names=("a", "a"))


# --- ROIs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("matrix", "rotated"), [(64, False), (64, True), (160, True)])
def test_sphere_rois_read_each_sphere_nominal_values(matrix: int, rotated: bool):
    t1 = np.array(NIST_T1_MS)
    t2 = np.minimum(np.linspace(230.0, 40.0, t1.size), 0.9 * t1)
    rng = np.random.default_rng(5) if rotated else None
    truth = sphere_phantom(matrix, t1_ms=t1.tolist(), t2_ms=t2.tolist(), rng=rng)
    geometry = SliceGeometry.square(FOV_MM, matrix, 5.0)
    rois = sphere_phantom_rois(truth, geometry)
    assert [r.name for r in rois] == [f"sphere_{i + 1:02d}" for i in range(t1.size)]
    t1_stats = structure_statistics(truth.t1_ms, rois, geometry, quantity="T1")
    t2_stats = structure_statistics(truth.t2_ms, rois, geometry, quantity="T2")
    for i, roi in enumerate(rois):
        assert roi.mask.any()
        assert np.all(truth.labels[roi.mask] == i + 2)  # inside its own sphere: no edge, no neighbour
        assert t1_stats[i].mean_ms == pytest.approx(t1[i], rel=0.01)
        assert t2_stats[i].mean_ms == pytest.approx(t2[i], rel=0.01)
        assert t1_stats[i].nominal_ms == pytest.approx(t1[i], rel=1e-6)
        assert t2_stats[i].nominal_ms == pytest.approx(t2[i], rel=1e-6)


def test_sphere_circles_match_the_layout():
    truth = sphere_phantom(160)
    geometry = SliceGeometry.square(FOV_MM, 160, 5.0)
    circles = sphere_phantom_circles(truth, geometry)
    assert len(circles) == len(NIST_T1_MS)
    for i, circle in enumerate(circles):
        inside = truth.labels == i + 2
        # a disc of the label's area: radius about 13.7 pixels at 160^2 (about 585 pixels per sphere)
        assert circle.radius_mm == pytest.approx(np.sqrt(inside.sum() / np.pi) * FOV_MM / 160, rel=1e-9)
        unshrunk = circle_rois([circle], geometry)[0].mask
        assert np.count_nonzero(unshrunk & inside) >= 0.97 * inside.sum()
    margin_px = SPHERE_MARGIN_MM / (FOV_MM / 160)
    shrunk = sphere_phantom_rois(truth, geometry)
    for circle, roi in zip(circles, shrunk, strict=True):
        radius_px = circle.radius_mm / (FOV_MM / 160)
        assert roi.mask.sum() == pytest.approx(np.pi * (radius_px - margin_px) ** 2, rel=0.02)  # measured <= 0.5 %


def disc_area_bound_mm2(radius_mm: float, geometry: SliceGeometry) -> float:
    """Largest error of a disc's area counted by pixel centres: the pixels whose centre lies inside cover a disc of
    radius r - h and lie inside one of radius r + h (h the half diagonal of a pixel), so the error is at most
    pi ((r + h)^2 - r^2)."""
    h = float(np.hypot(*geometry.pixel_mm)) / 2
    return float(np.pi * (2 * radius_mm * h + h**2))


def test_disc_volume_against_its_analytic_area():
    geometry = SliceGeometry(fov_mm=(200.0, 180.0), matrix=(100, 120), slice_thickness_mm=5.0)  # 2.0 x 1.5 mm pixels
    radius_mm = 30.0
    exact_ml = np.pi * radius_mm**2 * geometry.slice_thickness_mm / 1000
    bound_ml = disc_area_bound_mm2(radius_mm, geometry) * geometry.slice_thickness_mm / 1000  # 8.5 % of the area
    rng = np.random.default_rng(0)
    n = 400
    centres = rng.uniform(-0.5, 0.5, size=(n, 2)) * geometry.pixel_mm
    rois = circle_rois(
        [Circle(f"disc{i}", (float(y), float(x)), radius_mm) for i, (y, x) in enumerate(centres)], geometry
    )
    stats = structure_statistics(np.ones(geometry.matrix), rois, geometry)
    volumes = np.array([s.volume_ml for s in stats])
    assert np.all(np.abs(volumes - exact_ml) <= bound_ml)
    # With the centre uniform over a pixel, the expected count of pixel centres inside is exactly the area over the
    # pixel area; each draw lies within +-bound, so by Hoeffding the mean of n draws is within
    # 2 bound sqrt(ln(2 / delta) / (2 n)) of the exact volume with probability 1 - delta (delta = 1e-6: 2.3 %).
    assert abs(volumes.mean() - exact_ml) <= 2 * bound_ml * np.sqrt(np.log(2 / 1e-6) / (2 * n))
    assert abs(volumes.mean() - exact_ml) / exact_ml < 0.001  # what it is (seeded): 0.006 %


def test_circle_centre_in_pixels_and_in_mm_agree():
    geometry = SliceGeometry(fov_mm=(128.0, 96.0), matrix=(64, 48), slice_thickness_mm=3.0)  # 2 mm pixels
    in_px = Circle("a", (40.0, 10.0), 9.0, centre_unit="px")
    in_mm = Circle("a", ((40.0 - 31.5) * 2.0, (10.0 - 23.5) * 2.0), 9.0)
    (a,), (b,) = circle_rois([in_px], geometry), circle_rois([in_mm], geometry)
    np.testing.assert_array_equal(a.mask, b.mask)
    rows, columns = np.nonzero(a.mask)
    assert (rows.mean(), columns.mean()) == pytest.approx((40.0, 10.0))


def test_rois_from_a_label_image():
    labels = np.zeros((3, 8, 8), dtype=np.int16)
    labels[:, 2:5, 2:5] = 3
    labels[1, 6, 6] = 7
    rois = rois_from_labels(labels, {7: "lesion", 3: "thalamus", 4: "absent"})
    assert [r.name for r in rois] == ["thalamus", "absent", "lesion"]
    assert rois[0].mask.shape == (3, 8, 8)
    assert rois[0].mask.sum() == 27
    assert not rois[1].mask.any()
    with pytest.raises(ValueError, match=r"labels \[7\] have no name"):
        rois_from_labels(labels, {3: "thalamus"})
    with pytest.raises(ValueError, match="distinct"):
        rois_from_labels(labels, {3: "a", 7: "a"})


def test_circle_and_geometry_validation():
    with pytest.raises(ValueError, match="radius_mm"):
        Circle("a", (0.0, 0.0), -1.0)
    with pytest.raises(ValueError, match="centre_unit"):
        Circle("a", (0.0, 0.0), 1.0, centre_unit="cm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not below radius"):
        circle_rois([Circle("a", (0.0, 0.0), 3.0)], GEOMETRY, margin_mm=3.0)
    with pytest.raises(ValueError, match="covers no pixel centre"):
        circle_rois([Circle("a", (500.0, 0.0), 3.0)], GEOMETRY)
    with pytest.raises(ValueError, match="fov_mm"):
        SliceGeometry(fov_mm=(0.0, 1.0), matrix=(4, 4), slice_thickness_mm=1.0)
    with pytest.raises(ValueError, match=re.escape("truth.labels has shape (64, 64)")):
        sphere_phantom_circles(sphere_phantom(64), SliceGeometry.square(FOV_MM, 96, 5.0))
    with pytest.raises(ValueError, match="no sphere_"):
        sphere_phantom_circles(brain_slice(64, np.random.default_rng(0)), GEOMETRY)


# --- statistics --------------------------------------------------------------------------------------------------


def test_statistics_across_samples_against_numpy():
    rng = np.random.default_rng(11)
    n_samples, ny, nx = 7, 16, 20
    geometry = SliceGeometry(fov_mm=(48.0, 50.0), matrix=(ny, nx), slice_thickness_mm=4.0)
    voxel_ml = 3.0 * 2.5 * 4.0 / 1000
    samples = rng.uniform(500.0, 1500.0, size=(n_samples, ny, nx))
    per_sample = rng.random((n_samples, ny, nx)) < 0.3
    fixed = np.zeros((ny, nx), dtype=bool)
    fixed[3:9, 4:15] = True
    sd_map = rng.uniform(5.0, 50.0, size=(ny, nx))
    rois = [Roi("moving", per_sample), Roi("fixed", fixed, nominal_ms={"T2": 80.0})]
    moving, still = structure_statistics(samples, rois, geometry, quantity="T2", sd_ms=sd_map)

    means = np.array([samples[s][per_sample[s]].mean() for s in range(n_samples)])
    medians = np.array([np.median(samples[s][per_sample[s]]) for s in range(n_samples)])
    volumes = per_sample.sum(axis=(1, 2)) * voxel_ml
    assert moving.quantity == "T2"
    assert moving.n_samples == n_samples
    np.testing.assert_allclose(moving.sample_mean_ms, means, rtol=1e-12)
    np.testing.assert_allclose(moving.sample_median_ms, medians, rtol=1e-12)
    np.testing.assert_allclose(moving.sample_volume_ml, volumes, rtol=1e-12)
    assert moving.mean_ms == pytest.approx(means.mean(), rel=1e-12)
    assert moving.mean_sd_ms == pytest.approx(means.std(), rel=1e-12)
    assert moving.mean_cv == pytest.approx(means.std() / means.mean(), rel=1e-12)
    assert moving.median_ms == pytest.approx(medians.mean(), rel=1e-12)
    assert moving.volume_ml == pytest.approx(volumes.mean(), rel=1e-12)
    assert moving.volume_sd_ml == pytest.approx(volumes.std(), rel=1e-12)
    assert moving.volume_cv == pytest.approx(volumes.std() / volumes.mean(), rel=1e-12)
    assert moving.mean_voxel_sd_ms == pytest.approx(sd_map[per_sample.any(axis=0)].mean(), rel=1e-12)
    assert moving.nominal_ms is None

    fixed_means = samples[:, fixed].mean(axis=1)
    assert still.sample_pixels == (66,) * n_samples
    assert still.volume_ml == pytest.approx(66 * voxel_ml, rel=1e-12)
    assert still.volume_sd_ml == 0.0
    assert still.volume_cv == 0.0
    assert still.mean_sd_ms == pytest.approx(fixed_means.std(), rel=1e-12)
    assert still.mean_voxel_sd_ms == pytest.approx(sd_map[fixed].mean(), rel=1e-12)
    assert still.nominal_ms == 80.0


def test_one_map_is_one_sample():
    values = np.arange(12.0).reshape(3, 4) + 100
    mask = values > 105
    geometry = SliceGeometry(fov_mm=(3.0, 4.0), matrix=(3, 4), slice_thickness_mm=1.0)
    (stats,) = structure_statistics(values, [Roi("r", mask)], geometry)
    assert stats.n_samples == 1
    assert stats.mean_ms == pytest.approx(values[mask].mean())
    assert stats.mean_sd_ms == 0.0
    assert stats.mean_voxel_sd_ms is None


def test_empty_structure_gives_none_and_json_without_nan():
    samples = np.full((3, 4, 4), 1000.0)
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[1, :2, :2] = True
    (stats,) = structure_statistics(samples, [Roi("lesion", masks)], SliceGeometry.square(4.0, 4, 1.0))
    assert stats.sample_mean_ms == (None, 1000.0, None)
    assert stats.mean_ms == 1000.0
    assert stats.mean_sd_ms == 0.0
    assert stats.sample_volume_ml == (0.0, 0.004, 0.0)
    text = json.dumps(dataclasses.asdict(stats), allow_nan=False)
    assert json.loads(text)["sample_median_ms"] == [None, 1000.0, None]
    (never,) = structure_statistics(
        samples, [Roi("absent", np.zeros((4, 4), dtype=bool))], SliceGeometry.square(4.0, 4, 1.0)
    )
    assert never.mean_ms is None
    assert never.volume_cv is None
    json.dumps(dataclasses.asdict(never), allow_nan=False)


def test_statistics_name_the_shapes_that_do_not_fit():
    geometry = SliceGeometry.square(8.0, 8, 1.0)
    samples = np.ones((5, 8, 8))
    with pytest.raises(
        ValueError, match=re.escape("values_ms has shape (5, 8, 7); its last two axes must be the matrix (8, 8)")
    ):
        structure_statistics(samples[..., :7], [], geometry)
    with pytest.raises(ValueError, match=re.escape("mask shape (4, 8, 8) fits neither (8, 8) nor (5, 8, 8)")):
        structure_statistics(samples, [Roi("r", np.ones((4, 8, 8), dtype=bool))], geometry)
    with pytest.raises(ValueError, match=re.escape("sd_ms must be one (y, x) map of shape (8, 8), got (5, 8, 8)")):
        structure_statistics(samples, [], geometry, sd_ms=samples)
    bad = samples.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        structure_statistics(bad, [Roi("r", np.ones((8, 8), dtype=bool))], geometry)
    with pytest.raises(ValueError, match="mask must be bool"):
        Roi("r", np.ones((8, 8)))
