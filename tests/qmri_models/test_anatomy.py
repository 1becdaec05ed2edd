import itertools
import time

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

from qmri_models.simulation.anatomy import (
    NIST_T1_MS,
    RANDOM_FLUID_T1_MS,
    RANDOM_FLUID_T2_MS,
    RANDOM_SPHERE_COUNT,
    RANDOM_SPHERE_PD,
    RANDOM_SPHERE_T1_MS,
    RANDOM_SPHERE_T2_MS,
    brain_slice,
    random_sphere_phantom,
    sphere_phantom,
)
from qmri_models.simulation.tissues import (
    TISSUE_CLASSES,
    TISSUE_RANGES_3T,
    VARIATION_LIMIT,
    ParameterMaps,
    draw_parameter_maps,
)

WM, GM, CSF, FAT, LESION = (TISSUE_CLASSES.index(n) for n in ("white_matter", "grey_matter", "csf", "fat", "lesion"))
BRAIN = (WM, GM, CSF, LESION)
SEEDS = range(8)
TOL = 1e-4  # float32 rounding on top of the clipped variation


@pytest.fixture(scope="module")
def slices() -> list[ParameterMaps]:
    return [brain_slice(160, np.random.default_rng(seed)) for seed in SEEDS]


def assert_within_ranges(maps: ParameterMaps) -> None:
    lo, hi = 1 - VARIATION_LIMIT - TOL, 1 + VARIATION_LIMIT + TOL
    for c, name in enumerate(TISSUE_CLASSES):
        inside = maps.labels == c
        if not inside.any():
            continue
        if name == "background":
            for values in (maps.t1_ms, maps.t2_ms, maps.pd):
                assert np.all(values[inside] == 0)
            continue
        r = TISSUE_RANGES_3T[name]
        for values, (low, high) in ((maps.t1_ms, r.t1_ms), (maps.t2_ms, r.t2_ms), (maps.pd, r.pd)):
            assert values[inside].min() >= low * lo, name
            assert values[inside].max() <= high * hi, name
    assert maps.pd.max() <= 1.0


# --- tissues -----------------------------------------------------------------------------------------------------


def test_ranges_cover_every_tissue_and_are_ordered_like_3t_literature():
    assert set(TISSUE_RANGES_3T) == set(TISSUE_CLASSES) - {"background"}
    for r in TISSUE_RANGES_3T.values():
        for low, high in (r.t1_ms, r.t2_ms, r.pd):
            assert 0 < low < high
        assert r.pd[1] <= 1.0
    t1 = {name: np.mean(r.t1_ms) for name, r in TISSUE_RANGES_3T.items()}
    assert t1["fat"] < t1["white_matter"] < t1["lesion"] < t1["grey_matter"] < t1["csf"]
    assert TISSUE_RANGES_3T["white_matter"].t2_ms[1] < TISSUE_RANGES_3T["csf"].t2_ms[0]


def test_draw_parameter_maps_stays_in_ranges_and_varies_smoothly():
    labels = np.repeat(np.arange(len(TISSUE_CLASSES), dtype=np.uint8), 20)[None, :].repeat(64, axis=0)
    for seed in range(5):
        maps = draw_parameter_maps(labels, np.random.default_rng(seed))
        assert maps.label_names == TISSUE_CLASSES
        assert maps.t1_ms.dtype == maps.t2_ms.dtype == maps.pd.dtype == np.float32
        assert maps.labels.dtype == np.uint8
        assert_within_ranges(maps)
        white = maps.t1_ms[labels == WM]
        assert 0.005 < white.std() / white.mean() < VARIATION_LIMIT
        neighbour_step = np.abs(np.diff(maps.t1_ms[:, 20:40], axis=0)).max() / white.mean()
        assert neighbour_step < 0.01


def test_draw_parameter_maps_rejects_bad_labels():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2D integer"):
        draw_parameter_maps(np.zeros((4, 4, 4), dtype=np.uint8), rng)
    with pytest.raises(ValueError, match="2D integer"):
        draw_parameter_maps(np.zeros((4, 4)), rng)
    with pytest.raises(ValueError, match=r"0\.\.5, got 9\.\.9"):
        draw_parameter_maps(np.full((4, 4), 9, dtype=np.uint8), rng)


def test_parameter_maps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one 2D shape"):
        ParameterMaps(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4), np.uint8), ("a",))


# --- brain slices ------------------------------------------------------------------------------------------------


def test_brain_slice_shapes_and_types(slices: list[ParameterMaps]):
    for maps in slices:
        assert maps.label_names == TISSUE_CLASSES
        for values in (maps.t1_ms, maps.t2_ms, maps.pd):
            assert values.shape == (160, 160)
            assert values.dtype == np.float32
        assert maps.labels.dtype == np.uint8


def test_brain_slice_is_mostly_brain_with_every_brain_class(slices: list[ParameterMaps]):
    for maps in slices:
        fractions = np.bincount(maps.labels.ravel(), minlength=len(TISSUE_CLASSES)) / maps.labels.size
        head = 1 - fractions[0]
        assert 0.25 < head < 0.75
        assert fractions[list(BRAIN)].sum() / head > 0.7
        for c in (WM, GM, CSF):
            assert fractions[c] > 0.01, TISSUE_CLASSES[c]
        assert fractions[GM] > fractions[CSF]


def test_brain_slice_has_scalp_fat_at_the_rim(slices: list[ParameterMaps]):
    for maps in slices:
        head = maps.labels > 0
        cy, cx = np.argwhere(head).mean(axis=0)
        y, x = np.indices(head.shape)
        radius = np.hypot(y - cy, x - cx)
        fat = maps.labels == FAT
        assert fat.mean() > 0.02
        assert np.median(radius[fat]) > np.percentile(radius[np.isin(maps.labels, BRAIN)], 90)


def test_brain_slice_parameters_within_tissue_ranges(slices: list[ParameterMaps]):
    for maps in slices:
        assert_within_ranges(maps)


def test_brain_slice_is_deterministic_per_seed(slices: list[ParameterMaps]):
    again = brain_slice(160, np.random.default_rng(SEEDS[0]))
    for field in ("t1_ms", "t2_ms", "pd", "labels"):
        np.testing.assert_array_equal(getattr(again, field), getattr(slices[0], field))
    assert not np.array_equal(slices[0].labels, slices[1].labels)
    assert not np.array_equal(slices[0].t1_ms, slices[1].t1_ms)


def test_brain_slice_orientations_differ(slices: list[ParameterMaps]):
    masks = [maps.labels > 0 for maps in slices]
    overlaps = [np.logical_and(a, b).sum() / np.logical_or(a, b).sum() for a, b in itertools.pairwise(masks)]
    assert min(overlaps) < 0.9


def test_lesions_are_small_and_inside_the_head(slices: list[ParameterMaps]):
    with_lesions = [maps for maps in slices if (maps.labels == LESION).any()]
    assert len(with_lesions) >= len(slices) // 2
    pixel_area_mm2 = (220.0 / 160) ** 2
    for maps in with_lesions:
        lesion = maps.labels == LESION
        deep_inside = binary_erosion(maps.labels > 0, iterations=3)
        assert np.all(deep_inside[lesion])
        assert lesion.sum() * pixel_area_mm2 <= 3 * np.pi * 5.0**2


def test_no_lesions_when_max_lesions_is_zero():
    for seed in range(4):
        maps = brain_slice(96, np.random.default_rng(seed), max_lesions=0)
        assert not (maps.labels == LESION).any()


@pytest.mark.parametrize("matrix", [32, 64, 256])
def test_brain_slice_other_matrix_sizes(matrix: int):
    maps = brain_slice(matrix, np.random.default_rng(3), fov_mm=240.0)
    assert maps.t1_ms.shape == (matrix, matrix)
    assert (maps.labels == WM).any()
    assert (maps.labels == GM).any()


def test_brain_slice_is_fast_after_first_load(slices: list[ParameterMaps]):
    assert slices
    start = time.perf_counter()
    for seed in range(5):
        brain_slice(160, np.random.default_rng(100 + seed))
    assert (time.perf_counter() - start) / 5 < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matrix": 16}, "matrix must be at least 32, got 16"),
        ({"fov_mm": 0.0}, "fov_mm must be positive and finite, got 0.0"),
        ({"fov_mm": float("nan")}, "fov_mm must be positive and finite, got nan"),
        ({"max_lesions": -1}, "max_lesions must be at least 0, got -1"),
    ],
)
def test_brain_slice_rejects_bad_arguments(kwargs: dict, message: str):
    args = {"matrix": 64, "fov_mm": 220.0, "max_lesions": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        brain_slice(args.pop("matrix"), np.random.default_rng(0), **args)


# --- sphere phantom ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("matrix", [64, 160, 256])
def test_phantom_spheres_hold_exact_nist_values(matrix: int):
    maps = sphere_phantom(matrix)
    n = len(NIST_T1_MS)
    assert maps.label_names == ("background", "body", *(f"sphere_{i:02d}" for i in range(1, n + 1)))
    areas = np.bincount(maps.labels.ravel(), minlength=n + 2)
    assert len(areas) == n + 2
    assert areas[2:].min() >= 50
    assert areas[2:].max() <= 1.1 * areas[2:].min()
    for i, t1 in enumerate(NIST_T1_MS):
        inside = maps.labels == i + 2
        assert np.all(maps.t1_ms[inside] == np.float32(t1))
        assert np.unique(maps.t2_ms[inside]).size == 1
        assert np.all(maps.pd[inside] == np.float32(0.9))
    body = maps.labels == 1
    assert np.all(maps.t1_ms[body] == 2500.0)
    assert np.all(maps.t2_ms[body] == 1500.0)
    assert np.all(maps.t1_ms[maps.labels == 0] == 0)
    assert np.all(maps.pd[maps.labels == 0] == 0)


def test_phantom_spheres_are_whole_separate_discs_at_matrix_160():
    labels = sphere_phantom(160).labels
    for label in range(2, len(NIST_T1_MS) + 2):
        sphere = labels == label
        rows, cols = np.flatnonzero(sphere.any(axis=1)), np.flatnonzero(sphere.any(axis=0))
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert abs(height - width) <= 1
        assert sphere.sum() >= max(50, 0.9 * np.pi * (height / 2) ** 2)
        assert set(np.unique(labels[binary_dilation(sphere, iterations=2)])) == {1, label}


def test_phantom_default_t2_is_plausible_and_follows_t1():
    maps = sphere_phantom(160)
    t2 = np.array([maps.t2_ms[maps.labels == i + 2][0] for i in range(len(NIST_T1_MS))])
    assert np.all(t2 <= np.asarray(NIST_T1_MS))
    assert np.all(np.diff(t2) < 0)
    assert 1200 < t2[0] < 1600
    assert 15 < t2[-1] < 21


def test_phantom_explicit_t2_and_rotation():
    t1, t2 = [1000.0, 500.0, 250.0], [80.0, 40.0, 20.0]
    fixed = sphere_phantom(96, t1_ms=t1, t2_ms=t2, pd=0.7, background_t1_ms=3000.0, background_t2_ms=2000.0)
    turned = sphere_phantom(96, t1_ms=t1, t2_ms=t2, pd=0.7, rng=np.random.default_rng(5))
    for maps in (fixed, turned):
        for i in range(3):
            inside = maps.labels == i + 2
            assert np.all(maps.t1_ms[inside] == t1[i])
            assert np.all(maps.t2_ms[inside] == t2[i])
    assert np.all(fixed.t1_ms[fixed.labels == 1] == 3000.0)
    assert not np.array_equal(fixed.labels, turned.labels)
    again = sphere_phantom(96, t1_ms=t1, t2_ms=t2, pd=0.7, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(again.labels, turned.labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matrix": 31}, "matrix must be at least 32, got 31"),
        ({"t1_ms": []}, "t1_ms must be non-empty"),
        ({"t1_ms": [1000.0, -5.0]}, r"t1_ms must be non-empty, positive and finite, got \[1000.0, -5.0\]"),
        ({"t2_ms": [50.0, 60.0]}, "t2_ms needs one value per sphere"),
        ({"pd": 1.5}, r"pd must lie in \(0, 1\], got 1.5"),
        ({"background_t1_ms": 0.0}, "background T1 and T2"),
        ({"t1_ms": [1000.0] * 300}, "at most 254 spheres"),
        ({"t1_ms": [1000.0] * 200, "matrix": 32}, "200 spheres do not fit"),
    ],
)
def test_phantom_rejects_bad_arguments(kwargs: dict, message: str):
    args = {"matrix": 64} | kwargs
    with pytest.raises(ValueError, match=message):
        sphere_phantom(args.pop("matrix"), **args)


# --- random sphere phantom ---------------------------------------------------------------------------------------


def _sphere_values(maps: ParameterMaps) -> tuple[np.ndarray, np.ndarray]:
    """Return the T1 and T2 in ms of every sphere of a phantom, each read from its pixels (one value per sphere)."""
    values = []
    for label in range(2, len(maps.label_names)):
        inside = maps.labels == label
        assert inside.sum() >= 30
        assert np.unique(maps.t1_ms[inside]).size == np.unique(maps.t2_ms[inside]).size == 1
        values.append((maps.t1_ms[inside][0], maps.t2_ms[inside][0]))
    t1, t2 = np.array(values).T
    return t1, t2


def test_random_sphere_phantom_values_lie_in_their_ranges():
    phantoms = [random_sphere_phantom(160, np.random.default_rng(seed)) for seed in range(20)]
    counts, all_t1, all_t2 = [], [], []
    for maps in phantoms:
        t1, t2 = _sphere_values(maps)
        counts.append(t1.size)
        all_t1.append(t1)
        all_t2.append(t2)
        assert np.all(t2 <= t1)
        fluid = maps.labels == 1
        assert np.unique(maps.t1_ms[fluid]).size == np.unique(maps.t2_ms[fluid]).size == 1
        assert RANDOM_FLUID_T1_MS[0] <= maps.t1_ms[fluid][0] <= RANDOM_FLUID_T1_MS[1]
        assert RANDOM_FLUID_T2_MS[0] <= maps.t2_ms[fluid][0] <= RANDOM_FLUID_T2_MS[1]
        pd = np.unique(maps.pd[maps.labels > 0])
        assert pd.size == 1
        assert RANDOM_SPHERE_PD[0] <= pd[0] <= RANDOM_SPHERE_PD[1]
        assert np.all(maps.t1_ms[maps.labels == 0] == 0)
    assert RANDOM_SPHERE_COUNT[0] <= min(counts) < max(counts) <= RANDOM_SPHERE_COUNT[1]
    t1, t2 = np.concatenate(all_t1), np.concatenate(all_t2)
    assert RANDOM_SPHERE_T1_MS[0] * (1 - TOL) <= t1.min()
    assert t1.max() <= RANDOM_SPHERE_T1_MS[1] * (1 + TOL)
    assert RANDOM_SPHERE_T2_MS[0] * (1 - TOL) <= t2.min()
    assert t2.max() <= RANDOM_SPHERE_T2_MS[1] * (1 + TOL)
    # log-uniform: about as many spheres below the geometric middle of the T1 range as above it
    below = np.mean(t1 < np.sqrt(RANDOM_SPHERE_T1_MS[0] * RANDOM_SPHERE_T1_MS[1]))
    assert 0.35 < below < 0.65


def test_random_sphere_phantom_is_seeded():
    first = random_sphere_phantom(96, np.random.default_rng(3))
    again = random_sphere_phantom(96, np.random.default_rng(3))
    other = random_sphere_phantom(96, np.random.default_rng(4))
    for name in ("t1_ms", "t2_ms", "pd", "labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.label_names == again.label_names
    assert not np.array_equal(first.t1_ms, other.t1_ms)
    assert not np.array_equal(first.t2_ms, other.t2_ms)
