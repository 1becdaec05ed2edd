"""Ground-truth anatomy for the slice simulator: oblique brain slices from the MNI152 template, and sphere phantoms.

Brain slices come from the ICBM 2009 symmetric MNI152 templates that ship inside nilearn's wheel (1 mm, no download).
White and grey matter are the template's tissue probabilities; CSF is the brain mask minus both. nilearn's T1
template is skull-stripped, so there is no scalp to find in it: the head around the brain is built from the distance
to the brain mask instead, as a thin subarachnoid CSF rim, a skull shell that gives no MR signal (labelled
background, like air) and a layer of subcutaneous fat outside it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates, zoom
from scipy.spatial.transform import Rotation

from qmri_models.simulation.tissues import TISSUE_CLASSES, ParameterMaps, draw_parameter_maps

NIST_T1_MS: tuple[float, ...] = (1884, 1330, 987, 690, 485, 342, 241, 175, 121, 85, 60, 43, 30, 21)
"""T1 of the NIST system phantom's T1 spheres in ms (Table 1 of the qMRI Diffusor paper)."""

MIN_MATRIX = 32
"""Smallest image size (pixels per side) either generator accepts."""

CSF_RIM_MM = 2.0
"""Subarachnoid CSF added outside the template's brain mask, in mm."""
SKULL_OUTER_MM = 8.0
"""Outer edge of the signal-free skull shell, in mm from the brain mask."""
SCALP_OUTER_MM = 13.0
"""Outer edge of the subcutaneous fat layer, in mm from the brain mask."""

MAX_TILT_DEG = 25.0
"""Largest tilt of the slice normal away from the axial, coronal or sagittal normal, in degrees."""
BASE_ORIENTATION_P = (0.6, 0.2, 0.2)
"""Probability of an axial-, coronal- or sagittal-like slice."""
SLICE_PERCENTILES = (20.0, 80.0)
"""The slice centre lies between these percentiles of the brain's extent along the slice normal."""
WARP_SMOOTHING_MM = 20.0
"""Gaussian width of the elastic deformation field, in mm."""
WARP_RMS_MM = (1.0, 3.0)
"""Range of the elastic deformation's RMS displacement per axis, in mm."""
LESION_SEMI_AXIS_MM = (1.5, 5.0)
"""Range of the semi-axes of the elliptical lesions, in mm."""

CONTAINER_RADIUS = 0.45
"""Radius of the phantom's container as a fraction of the image size."""
SPHERE_GAP = 0.3
"""Gap between phantom spheres, and between spheres and the wall, as a fraction of the sphere radius."""
MIN_SPHERE_RADIUS_PX = 2.0
"""Smallest sphere radius in pixels the phantom layout accepts."""
WATER_T1_MS = 3000.0
"""T1 of the undoped water the phantom's T2 rule starts from, in ms."""
WATER_T2_MS = 2000.0
"""T2 of the undoped water the phantom's T2 rule starts from, in ms."""
NICL2_R2_OVER_R1 = 1.1
"""Ratio of transverse to longitudinal relaxivity of NiCl2 (the NIST T1 spheres' dopant), near 1 at 3 T."""

RANDOM_SPHERE_COUNT = (6, 14)
"""Fewest and most spheres of a random phantom (both included)."""
RANDOM_SPHERE_T1_MS = (100.0, 3000.0)
"""Range of a random phantom sphere's T1 in ms, drawn log-uniformly."""
RANDOM_SPHERE_T2_MS = (20.0, 2000.0)
"""Range of a random phantom sphere's T2 in ms, drawn log-uniformly and then capped at the sphere's T1."""
RANDOM_SPHERE_PD = (0.6, 1.0)
"""Range of a random phantom's proton density (one value for container and spheres), drawn uniformly."""
RANDOM_FLUID_T1_MS = (2000.0, 4000.0)
"""Range of a random phantom's container fluid T1 in ms, drawn uniformly."""
RANDOM_FLUID_T2_MS = (1000.0, 2000.0)
"""Range of a random phantom's container fluid T2 in ms, drawn uniformly."""

_WM = TISSUE_CLASSES.index("white_matter")
_LESION = TISSUE_CLASSES.index("lesion")
_BASE_FRAMES = (
    np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),  # axial: columns R, rows A->P, normal S
    np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),  # coronal: columns R, rows S->I, normal A
    np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # sagittal: columns A, rows S->I, normal R
)
"""Columns are the world (MNI, RAS mm) directions of image columns, image rows and the slice normal."""


@dataclass(frozen=True)
class _Atlas:
    """Tissue probability volumes and geometry of the MNI152 head."""

    probabilities: np.ndarray
    """Probability times 255 of white matter, grey matter, CSF and fat. Shape `(4, i, j, k)` uint8."""
    voxel_from_mm: np.ndarray
    """Affine from MNI mm to voxel indices. Shape `(4, 4)`."""
    brain_mm: np.ndarray
    """MNI positions of a subsample of brain voxels, in mm. Shape `(points, 3)`."""


@lru_cache(maxsize=1)
def _atlas() -> _Atlas:
    """Return the MNI152 head model, loaded from nilearn's bundled 1 mm templates once per process."""
    from nilearn import datasets  # nilearn takes seconds to import; only brain slices need it

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    brain = np.asarray(mask_img.dataobj) > 0
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    distance = _distance_from_mask_mm(brain)
    probabilities = np.empty((4, *brain.shape), dtype=np.uint8)
    probabilities[0] = _as_uint8(wm)
    probabilities[1] = _as_uint8(gm)
    probabilities[2] = _as_uint8(np.where(brain, 1.0 - wm - gm, distance <= CSF_RIM_MM))
    probabilities[3] = _as_uint8((distance > SKULL_OUTER_MM) & (distance <= SCALP_OUTER_MM))
    points = np.argwhere(brain[::4, ::4, ::4]) * 4.0
    return _Atlas(
        probabilities=probabilities,
        voxel_from_mm=np.linalg.inv(mask_img.affine),
        brain_mm=points @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3],
    )


def _distance_from_mask_mm(mask: np.ndarray) -> np.ndarray:
    """Return each 1 mm voxel's distance in mm from ``mask``. Same shape as ``mask``, float32.

    The transform runs on a 2 mm grid (block majority of the mask) and is interpolated back: a full 1 mm Euclidean
    distance transform would need several hundred MB at once, and the head layers it defines only need about 1 mm.
    """
    padded = np.pad(mask, [(0, n % 2) for n in mask.shape], mode="edge")
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    coarse = distance_transform_edt(blocks.mean(axis=(1, 3, 5)) < 0.5, sampling=2.0).astype(np.float32)
    fine = zoom(coarse, 2, order=1, grid_mode=True, mode="nearest")
    return fine[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def _as_uint8(probability: np.ndarray) -> np.ndarray:
    """Return a probability volume clipped to 0..1 and stored as 0..255. Same shape, uint8."""
    return np.round(np.clip(probability, 0.0, 1.0) * 255).astype(np.uint8)


def brain_slice(
    matrix: int,
    rng: np.random.Generator,
    *,
    fov_mm: float = 220.0,
    max_lesions: int = 3,
) -> ParameterMaps:
    """Return the ground truth of a random, elastically deformed, oblique slice through an MNI152 head.

    The slice normal is axial-, coronal- or sagittal-like (probabilities ``BASE_ORIENTATION_P``), tilted by up to
    ``MAX_TILT_DEG`` about both in-plane axes and rotated in plane by any angle. Its centre sits between the 20th and
    80th percentile of the brain along the normal, so every slice holds plenty of brain. Each pixel takes the most
    probable class; up to ``max_lesions`` small elliptical lesions replace white matter. T1, T2 and PD are then drawn
    per class by ``draw_parameter_maps``. The same generator state gives the same slice.

    Parameters
    ----------
    matrix : Image size in pixels per side, at least 32.
    rng : Random generator.
    fov_mm : Field of view per side in mm.
    max_lesions : Most lesions to place; the number is drawn uniformly from 0 to this.

    Returns
    -------
    Parameter maps with ``label_names`` equal to ``TISSUE_CLASSES``; every array has shape `(matrix, matrix)`.
    """
    _check_matrix(matrix)
    if not np.isfinite(fov_mm) or fov_mm <= 0:
        raise ValueError(f"fov_mm must be positive and finite, got {fov_mm}")
    if max_lesions < 0:
        raise ValueError(f"max_lesions must be at least 0, got {max_lesions}")
    atlas = _atlas()
    points_mm = _slice_points_mm(matrix, fov_mm, rng, atlas)
    voxels = np.tensordot(atlas.voxel_from_mm[:3, :3], points_mm, axes=1) + atlas.voxel_from_mm[:3, 3, None, None]
    labels = _most_probable_class(atlas.probabilities, voxels)
    _add_lesions(labels, fov_mm / matrix, max_lesions, rng)
    return draw_parameter_maps(labels, rng)


def _check_matrix(matrix: int) -> None:
    """Raise ValueError unless ``matrix`` is an image size this module supports."""
    if matrix < MIN_MATRIX:
        raise ValueError(f"matrix must be at least {MIN_MATRIX}, got {matrix}")


def _slice_points_mm(matrix: int, fov_mm: float, rng: np.random.Generator, atlas: _Atlas) -> np.ndarray:
    """Return the deformed MNI position of every pixel centre of a random slice, in mm. Shape `(3, y, x)`."""
    frame = _random_frame(rng)
    normal = frame[:, 2]
    depth = atlas.brain_mm @ normal
    centre = atlas.brain_mm.mean(axis=0)
    centre += (rng.uniform(*np.percentile(depth, SLICE_PERCENTILES)) - centre @ normal) * normal
    s = (np.arange(matrix) - (matrix - 1) / 2) * (fov_mm / matrix)
    points = centre[:, None, None] + frame[:, 0, None, None] * s[None, None, :] + frame[:, 1, None, None] * s[:, None]
    return points + _elastic_displacement_mm(matrix, fov_mm, rng)


def _random_frame(rng: np.random.Generator) -> np.ndarray:
    """Return world directions of image columns, image rows and slice normal as columns. Shape `(3, 3)`."""
    base = _BASE_FRAMES[rng.choice(len(_BASE_FRAMES), p=BASE_ORIENTATION_P)]
    tilt = rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG, size=2)
    in_plane = rng.uniform(0.0, 360.0)
    return base @ Rotation.from_euler("xyz", [tilt[0], tilt[1], in_plane], degrees=True).as_matrix()


def _elastic_displacement_mm(matrix: int, fov_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Return a smooth random 3D displacement of every pixel, in mm. Shape `(3, y, x)`."""
    sigma_px = WARP_SMOOTHING_MM * matrix / fov_mm
    field = gaussian_filter(rng.standard_normal((3, matrix, matrix)), sigma=(0, sigma_px, sigma_px), mode="reflect")
    field /= np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-12)
    return field * rng.uniform(*WARP_RMS_MM)


def _most_probable_class(probabilities: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Return the most probable ``TISSUE_CLASSES`` index at each voxel position. Shape `(y, x)` uint8.

    Parameters
    ----------
    probabilities : Probability times 255 of white matter, grey matter, CSF and fat. Shape `(4, i, j, k)` uint8.
    voxels : Fractional voxel index of every pixel. Shape `(3, y, x)`.
    """
    sampled = np.empty((len(TISSUE_CLASSES) - 1, *voxels.shape[1:]), dtype=np.float32)
    for c, volume in enumerate(probabilities, start=1):
        map_coordinates(volume, voxels, output=sampled[c], order=1, mode="constant", cval=0.0)
    sampled[0] = 255.0 - sampled[1:].sum(axis=0)
    return np.argmax(sampled, axis=0).astype(np.uint8)


def _add_lesions(labels: np.ndarray, pixel_mm: float, max_lesions: int, rng: np.random.Generator) -> None:
    """Paint 0 to ``max_lesions`` random elliptical lesions into the white matter of ``labels``, in place.

    Parameters
    ----------
    labels : Tissue class of each pixel, modified in place. Shape `(y, x)` uint8.
    pixel_mm : Pixel size in mm.
    max_lesions : Most lesions to place.
    rng : Random generator.
    """
    y, x = np.indices(labels.shape)
    for _ in range(rng.integers(0, max_lesions + 1)):
        white = np.flatnonzero(labels == _WM)
        if white.size == 0:
            return
        cy, cx = np.unravel_index(white[rng.integers(white.size)], labels.shape)
        a, b = rng.uniform(*LESION_SEMI_AXIS_MM, size=2) / pixel_mm
        angle = rng.uniform(0.0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = (y - cy) * np.cos(angle) - (x - cx) * np.sin(angle)
        labels[((u / a) ** 2 + (v / b) ** 2 <= 1.0) & (labels == _WM)] = _LESION


def sphere_phantom(
    matrix: int,
    *,
    t1_ms: Sequence[float] = NIST_T1_MS,
    t2_ms: Sequence[float] | None = None,
    pd: float = 0.9,
    background_t1_ms: float = 2500.0,
    background_t2_ms: float = 1500.0,
    rng: np.random.Generator | None = None,
) -> ParameterMaps:
    """Return the ground truth of a NIST-like phantom: spheres of known T1 and T2 in a round container of fluid.

    The container (label ``"body"``) has radius 0.45 of the image. The spheres, one per ``t1_ms`` entry, are equal
    circles as large as fit on concentric rings filled from the outside in (the 14 NIST values give 10 outside and 4
    inside, each about 600 pixels at matrix 160), with a gap of 0.3 sphere radii between neighbours and to the wall.
    Every pixel of a sphere holds exactly its T1, T2 and ``pd``: there is no spatial variation.

    When ``t2_ms`` is None each sphere's T2 follows from its T1 by the NiCl2 relaxivity rule
    ``1/T2 = 1/T2w + (r2/r1) * max(1/T1 - 1/T1w, 0)`` with undoped water T1w = 3000 ms, T2w = 2000 ms and r2/r1 = 1.1,
    then capped at T1 (so 1884 ms gives about 1400 ms and 21 ms about 19 ms).

    Parameters
    ----------
    matrix : Image size in pixels per side, at least 32.
    t1_ms : T1 of each sphere in ms, all positive; sphere ``i`` is labelled ``sphere_{i + 1:02d}``.
    t2_ms : T2 of each sphere in ms, all positive, or None for the rule above.
    pd : Proton density of container fluid and spheres, in (0, 1].
    background_t1_ms : T1 of the container fluid in ms.
    background_t2_ms : T2 of the container fluid in ms.
    rng : Random generator that rotates the sphere layout about the centre, or None for a fixed layout.

    Returns
    -------
    Parameter maps labelled ``("background", "body", "sphere_01", ...)``; every array has shape `(matrix, matrix)`.
    """
    _check_matrix(matrix)
    t1 = _positive_values("t1_ms", t1_ms)
    t2 = _default_t2_ms(t1) if t2_ms is None else _positive_values("t2_ms", t2_ms)
    if t2.shape != t1.shape:
        raise ValueError(f"t2_ms needs one value per sphere ({t1.size}), got {t2.size}")
    if not 0 < pd <= 1:
        raise ValueError(f"pd must lie in (0, 1], got {pd}")
    background = _positive_values("background T1 and T2 in ms", [background_t1_ms, background_t2_ms])
    labels = _phantom_labels(matrix, t1.size, 0.0 if rng is None else rng.uniform(0.0, 2 * np.pi))
    t1_table = np.concatenate([[0.0, background[0]], t1])
    t2_table = np.concatenate([[0.0, background[1]], t2])
    return ParameterMaps(
        t1_ms=t1_table[labels].astype(np.float32),
        t2_ms=t2_table[labels].astype(np.float32),
        pd=np.where(labels > 0, pd, 0.0).astype(np.float32),
        labels=labels,
        label_names=("background", "body", *(f"sphere_{i + 1:02d}" for i in range(t1.size))),
    )


def _positive_values(name: str, values: Sequence[float]) -> np.ndarray:
    """Return ``values`` as a non-empty float array after checking every entry is positive and finite. Shape `(n,)`."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0 or not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be non-empty, positive and finite, got {list(values)}")
    return array


def _default_t2_ms(t1_ms: np.ndarray) -> np.ndarray:
    """Return the T2 in ms of NiCl2-doped water with the given T1 in ms (rule in ``sphere_phantom``). Shape `(n,)`."""
    r1_doping = np.maximum(1.0 / t1_ms - 1.0 / WATER_T1_MS, 0.0)
    return np.minimum(1.0 / (1.0 / WATER_T2_MS + NICL2_R2_OVER_R1 * r1_doping), t1_ms)


def _phantom_labels(matrix: int, n_spheres: int, rotation: float) -> np.ndarray:
    """Return the phantom's label image: 0 outside, 1 container, 2 + i sphere i. Shape `(matrix, matrix)` uint8."""
    if n_spheres > 254:
        raise ValueError(f"at most 254 spheres fit in uint8 labels, got {n_spheres}")
    container = CONTAINER_RADIUS * matrix
    radius, counts = _ring_layout(n_spheres, container)
    y, x = np.indices((matrix, matrix)) - (matrix - 1) / 2
    labels = (x**2 + y**2 <= container**2).astype(np.uint8)
    label = 2
    for ring, count in enumerate(counts):
        ring_radius = 0.0 if count == 1 and ring == len(counts) - 1 else _ring_radius(ring, radius, container)
        for angle in rotation + np.pi * (ring + 2 * np.arange(count)) / count:
            cy, cx = ring_radius * np.sin(angle), ring_radius * np.cos(angle)
            labels[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = label
            label += 1
    return labels


def _ring_radius(ring: int, radius: float, container: float) -> float:
    """Return the distance in pixels of ring ``ring``'s sphere centres from the image centre (ring 0 outermost)."""
    gap = SPHERE_GAP * radius
    return container - gap - radius - ring * (2 * radius + gap)


def _ring_capacities(radius: float, container: float) -> list[int]:
    """Return how many spheres of ``radius`` pixels fit on each ring, outermost first, without touching."""
    pitch = (2 + SPHERE_GAP) * radius
    capacities = []
    ring = 0
    while (rho := _ring_radius(ring, radius, container)) >= 0:
        capacities.append(1 if rho < pitch / 2 else int(np.pi / np.arcsin(min(pitch / (2 * rho), 1.0))))
        ring += 1
    return capacities


def _ring_layout(n_spheres: int, container: float) -> tuple[float, list[int]]:
    """Return the largest sphere radius in pixels for which ``n_spheres`` fit, and the count on each ring."""
    radius = container / 2
    while sum(capacities := _ring_capacities(radius, container)) < n_spheres:
        radius *= 0.98
        if radius < MIN_SPHERE_RADIUS_PX:
            raise ValueError(f"{n_spheres} spheres do not fit in a {2 * container:.0f}-pixel container")
    counts = np.diff(np.minimum(np.cumsum([0, *capacities]), n_spheres))
    return radius, [int(c) for c in counts if c > 0]


def random_sphere_phantom(matrix: int, rng: np.random.Generator) -> ParameterMaps:
    """Return a sphere phantom with random sphere count, relaxation times and container fluid (a QA object).

    ``sphere_phantom``'s layout with values drawn from ``rng``: ``RANDOM_SPHERE_COUNT`` spheres, each with T1
    log-uniform in ``RANDOM_SPHERE_T1_MS`` and T2 log-uniform in ``RANDOM_SPHERE_T2_MS`` capped at its T1; one PD
    uniform in ``RANDOM_SPHERE_PD``; container fluid T1 and T2 uniform in ``RANDOM_FLUID_T1_MS`` and
    ``RANDOM_FLUID_T2_MS``; a random rotation of the layout. The same generator state gives the same phantom.

    Parameters
    ----------
    matrix : Image size in pixels per side, at least 32.
    rng : Random generator.

    Returns
    -------
    Parameter maps labelled as ``sphere_phantom``'s; every array has shape `(matrix, matrix)`.
    """
    n_spheres = int(rng.integers(RANDOM_SPHERE_COUNT[0], RANDOM_SPHERE_COUNT[1] + 1))
    t1_ms = _log_uniform(rng, RANDOM_SPHERE_T1_MS, n_spheres)
    t2_ms = np.minimum(_log_uniform(rng, RANDOM_SPHERE_T2_MS, n_spheres), t1_ms)
    return sphere_phantom(
        matrix,
        t1_ms=t1_ms.tolist(),
        t2_ms=t2_ms.tolist(),
        pd=float(rng.uniform(*RANDOM_SPHERE_PD)),
        background_t1_ms=float(rng.uniform(*RANDOM_FLUID_T1_MS)),
        background_t2_ms=float(rng.uniform(*RANDOM_FLUID_T2_MS)),
        rng=rng,
    )


def random_phantom_ranges() -> dict[str, tuple[float, float]]:
    """Return the ranges ``random_sphere_phantom`` draws from, by name (``sphere_t2_ms``: ``RANDOM_SPHERE_T2_MS``...).

    A training run records them with its data, so its cache and model card follow the ranges it was made with.
    """
    return {
        "sphere_count": RANDOM_SPHERE_COUNT,
        "sphere_t1_ms": RANDOM_SPHERE_T1_MS,
        "sphere_t2_ms": RANDOM_SPHERE_T2_MS,
        "pd": RANDOM_SPHERE_PD,
        "fluid_t1_ms": RANDOM_FLUID_T1_MS,
        "fluid_t2_ms": RANDOM_FLUID_T2_MS,
    }


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int) -> np.ndarray:
    """Return ``size`` values drawn log-uniformly between the two positive ``bounds``. Shape `(size,)`."""
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size=size))
