"""How well an uncertainty map tells where the error is: blur, correlations, patches and structures (seeds 001, 002).

Seed 001's protocol (section II-E): the uncertainty is the interval's full width ``q = upper - lower``, the error
``e = |estimate - truth|``; both are blurred by a Gaussian of SD 2 pixels, then correlated (Pearson, and Spearman =
Pearson of the ranks) over the image (global) and within each of 100 non-overlapping patches of about equal size (a
10 x 10 grid of patches), the patch correlations averaged (region-based). Our maps count only a mask (tissue the fit
kept): the blur is normalised to the mask (``masked_blur``), so values outside it (CSF, skull, background, whose
errors are not scored) do not leak into the tissue, and correlations run over the mask's pixels. Besides the paper's
region-based figure, ``patch_means`` gives the mean of a map per patch, to correlate the patches' mean width with
their mean error.

Seed 002's question, per structure: does the mean voxel SD inside a structure predict the error of the structure's
mean value? ``structure_errors`` gives, per structure, that error and that mean SD.
"""

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata

BLUR_SIGMA_PX = 2.0
"""SD of the Gaussian blur before correlating, in pixels (seed 001)."""
PATCHES_PER_SIDE = 10
"""Patches per image side: 10 x 10 = 100 non-overlapping patches (seed 001)."""
MIN_PATCH_PIXELS = 3
"""Fewest mask pixels a patch needs for a correlation of its own."""


def _check_mask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` as bool after checking it has the shape of ``values``."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != values.shape:
        raise ValueError(f"mask must be bool of shape {values.shape}, got {mask.dtype} {mask.shape}")
    return mask


def masked_blur(values: np.ndarray, mask: np.ndarray, sigma_px: float = BLUR_SIGMA_PX) -> np.ndarray:
    """Return the Gaussian blur of ``values`` over the mask, normalised to it; 0 outside the mask.

    ``gaussian_filter(values * mask) / gaussian_filter(mask)`` on the mask: a weighted mean of the mask's pixels
    around each mask pixel, with Gaussian weights of SD ``sigma_px`` (``scipy.ndimage`` defaults: reflected edges,
    truncated at 4 SD).

    Parameters
    ----------
    values : Map to blur, finite on the mask. Shape `(y, x)`.
    mask : Pixels that count. Shape `(y, x)` bool.
    sigma_px : SD of the Gaussian in pixels, > 0.

    Returns
    -------
    The blurred map. Shape `(y, x)`.
    """
    values = np.asarray(values, dtype=np.float64)
    mask = _check_mask(values, mask)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2D map (y, x), got shape {values.shape}")
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
    if not np.isfinite(values[mask]).all():
        raise ValueError("values must be finite on the mask")
    weight = gaussian_filter(mask.astype(np.float64), sigma_px)
    blurred = gaussian_filter(np.where(mask, values, 0.0), sigma_px)
    out = np.zeros(values.shape)
    np.divide(blurred, weight, out=out, where=mask)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Return the Pearson correlation of two samples, or None when either is constant or has fewer than 2 values.

    Parameters
    ----------
    a : First sample. Shape `(n,)`.
    b : Second sample. Shape `(n,)`.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"samples must have one size, got {a.size} and {b.size}")
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    norm = float(np.sqrt(np.sum(da * da) * np.sum(db * db)))
    if norm == 0.0:
        return None
    return float(np.clip(np.sum(da * db) / norm, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Return the Spearman correlation (Pearson of the ranks, ties averaged), or None as ``pearson``.

    Parameters
    ----------
    a : First sample. Shape `(n,)`.
    b : Second sample. Shape `(n,)`.
    """
    return pearson(rankdata(np.ravel(a)), rankdata(np.ravel(b)))


def patch_slices(shape: tuple[int, int], per_side: int = PATCHES_PER_SIDE) -> list[tuple[slice, slice]]:
    """Return the ``per_side`` x ``per_side`` non-overlapping patches of about equal size that tile an image.

    Sizes differ by at most one pixel along each side (``numpy.array_split``'s split).

    Parameters
    ----------
    shape : Image shape `(y, x)`, each at least ``per_side``.
    per_side : Patches per side, >= 1.

    Returns
    -------
    The patches row by row, as ``(y slice, x slice)``.
    """
    if per_side < 1 or min(shape) < per_side:
        raise ValueError(f"per_side must be in [1, {min(shape)}] for shape {shape}, got {per_side}")
    edges = [np.cumsum([0, *(len(part) for part in np.array_split(np.arange(n), per_side))]) for n in shape]
    return [
        (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
        for y0, y1 in zip(edges[0][:-1], edges[0][1:], strict=True)
        for x0, x1 in zip(edges[1][:-1], edges[1][1:], strict=True)
    ]


def patch_means(values: np.ndarray, mask: np.ndarray, per_side: int = PATCHES_PER_SIDE) -> np.ndarray:
    """Return the mean of ``values`` over the mask's pixels of each patch (``patch_slices``) that has any.

    Parameters
    ----------
    values : Map. Shape `(y, x)`.
    mask : Pixels that count. Shape `(y, x)` bool.
    per_side : Patches per side.

    Returns
    -------
    The means of the patches with mask pixels, row by row. Shape `(patches,)`.
    """
    values = np.asarray(values, dtype=np.float64)
    mask = _check_mask(values, mask)
    return np.array([values[p][mask[p]].mean() for p in patch_slices(values.shape, per_side) if mask[p].any()])


@dataclass(frozen=True)
class ErrorCorrelation:
    """How an uncertainty map follows the absolute error on one image (seed 001's figures). None: undefined."""

    pearson: float | None
    """Over the mask's pixels, after the blur."""
    spearman: float | None
    region_pearson: float | None
    """Mean over the patches of the correlation within each patch (patches with ``MIN_PATCH_PIXELS`` mask pixels
    and some spread), after the blur: the paper's region-based figure."""
    region_spearman: float | None
    patch_mean_pearson: float | None
    """Over the patches, of the patch means (``patch_means``) of the blurred width and error."""
    patch_mean_spearman: float | None


def error_correlation(
    width: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray,
    *,
    sigma_px: float = BLUR_SIGMA_PX,
    per_side: int = PATCHES_PER_SIDE,
) -> ErrorCorrelation:
    """Return the correlations between an interval width and the absolute error on one image (seed 001, II-E).

    Parameters
    ----------
    width : Interval width (upper - lower), in the unit of the error. Shape `(y, x)`.
    error : Absolute error of the estimate. Shape `(y, x)`.
    mask : Pixels that count. Shape `(y, x)` bool.
    sigma_px : SD of the Gaussian blur applied to both, in pixels.
    per_side : Patches per side of the region-based figures.

    Returns
    -------
    Global, region-based and patch-mean correlations.
    """
    q = masked_blur(width, mask, sigma_px)
    e = masked_blur(error, mask, sigma_px)
    regions = [
        (q[p][mask[p]], e[p][mask[p]])
        for p in patch_slices(q.shape, per_side)
        if np.count_nonzero(mask[p]) >= MIN_PATCH_PIXELS
    ]
    region_r = [r for qp, ep in regions if (r := pearson(qp, ep)) is not None]
    region_rho = [r for qp, ep in regions if (r := spearman(qp, ep)) is not None]
    q_means, e_means = patch_means(q, mask, per_side), patch_means(e, mask, per_side)
    return ErrorCorrelation(
        pearson=pearson(q[mask], e[mask]),
        spearman=spearman(q[mask], e[mask]),
        region_pearson=float(np.mean(region_r)) if region_r else None,
        region_spearman=float(np.mean(region_rho)) if region_rho else None,
        patch_mean_pearson=pearson(q_means, e_means),
        patch_mean_spearman=spearman(q_means, e_means),
    )


@dataclass(frozen=True)
class StructureError:
    """A structure's mean value beside the truth's, and the mean voxel SD inside it (seed 002)."""

    n_pixels: int
    mean_error: float
    """Mean of the map minus mean of the truth over the structure, in the map's unit."""
    mean_sd: float
    """Mean of the voxel SD over the structure, in the map's unit."""


def structure_error(value: np.ndarray, truth: np.ndarray, sd: np.ndarray, structure: np.ndarray) -> StructureError:
    """Return the error of a structure's mean value and its mean voxel SD.

    Parameters
    ----------
    value : The map. Shape `(y, x)`.
    truth : The true map. Shape `(y, x)`.
    sd : The voxel SD of the map. Shape `(y, x)`.
    structure : The structure's pixels, at least one. Shape `(y, x)` bool.
    """
    value = np.asarray(value, dtype=np.float64)
    structure = _check_mask(value, structure)
    n_pixels = int(np.count_nonzero(structure))
    if n_pixels == 0:
        raise ValueError("structure has no pixel: its mean is undefined")
    return StructureError(
        n_pixels=n_pixels,
        mean_error=float(value[structure].mean() - np.asarray(truth, dtype=np.float64)[structure].mean()),
        mean_sd=float(np.asarray(sd, dtype=np.float64)[structure].mean()),
    )
