"""What a radiologist reads, per structure and per sample, and how much it moves across samples.

Samples are maps of one slice drawn from the reconstruction's uncertainty (MC dropout, ensemble members) or a single
map. Per structure and sample: its volume in ml and the mean and median of the map inside it. Across samples: the mean,
SD and coefficient of variation of the volume and of the structure's mean value; SDs are over the samples with
``ddof=0``, as the voxel SD maps of ``qmri_models.fitting.guided``, so the two compare directly. Beside them the mean
voxel SD inside the structure (over the union of its per-sample masks, as seed 002 summarises voxel SD inside the
union of ensemble segmentations), to ask whether it predicts the error of the structure's mean.

A structure empty in a sample has volume 0 and no mean or median there (None); statistics across samples use the
samples that hold it. Undefined numbers are None, so ``dataclasses.asdict`` gives JSON without NaN.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qmri_models.structures.geometry import SliceGeometry
from qmri_models.structures.rois import Roi


@dataclass(frozen=True)
class StructureStatistics:
    """Measurements of one structure in one map (``quantity``) over its samples; times in ms, volumes in ml."""

    structure: str
    quantity: str
    """The map measured: ``T1`` or ``T2``."""
    n_samples: int
    sample_pixels: tuple[int, ...]
    """Pixels of the structure in each sample."""
    sample_volume_ml: tuple[float, ...]
    """Volume of the structure in each sample: pixels times voxel volume."""
    sample_mean_ms: tuple[float | None, ...]
    """Mean of the map inside the structure in each sample (None where it is empty)."""
    sample_median_ms: tuple[float | None, ...]
    """Median of the map inside the structure in each sample (None where it is empty)."""
    volume_ml: float
    """Mean volume over the samples."""
    volume_sd_ml: float
    """SD of the volume over the samples."""
    volume_cv: float | None
    """Coefficient of variation of the volume, SD over mean (None for a mean of 0)."""
    mean_ms: float | None
    """Mean over the samples of the structure's mean value."""
    mean_sd_ms: float | None
    """SD over the samples of the structure's mean value."""
    mean_cv: float | None
    """Coefficient of variation of the structure's mean value over the samples."""
    median_ms: float | None
    """Mean over the samples of the structure's median value."""
    mean_voxel_sd_ms: float | None
    """Mean of the voxel SD map inside the union of the structure's masks (None without an SD map)."""
    nominal_ms: float | None
    """The structure's nominal value from its definition (a phantom's sphere), None when unknown."""


def structure_statistics(
    values_ms: np.ndarray,
    rois: Sequence[Roi],
    geometry: SliceGeometry,
    *,
    quantity: str = "T1",
    sd_ms: np.ndarray | None = None,
) -> tuple[StructureStatistics, ...]:
    """Return the statistics of every structure of a map over its samples.

    Parameters
    ----------
    values_ms : The map's samples in ms. Shape `(samples, y, x)`, or `(y, x)` for one map.
    rois : The structures; each mask is `(y, x)` (the same in every sample) or `(samples, y, x)`.
    geometry : Slice geometry: voxel volume, and the matrix the maps must have.
    quantity : Name of the map (``T1``, ``T2``): labels the results and picks each ROI's nominal value.
    sd_ms : Voxel SD map of the same quantity in ms, e.g. the SD over the samples. Shape `(y, x)`.

    Returns
    -------
    One result per ROI, in order.
    """
    samples = np.asarray(values_ms, dtype=np.float64)
    if samples.ndim == 2:
        samples = samples[None]
    if samples.ndim != 3 or samples.shape[0] < 1:
        raise ValueError(f"values_ms must be (samples, y, x) or (y, x), got shape {np.shape(values_ms)}")
    geometry.check_shape("values_ms", samples.shape)
    if sd_ms is not None and np.shape(sd_ms) != samples.shape[1:]:
        raise ValueError(f"sd_ms must be one (y, x) map of shape {samples.shape[1:]}, got {np.shape(sd_ms)}")
    return tuple(_one_structure(samples, roi, geometry, quantity, sd_ms) for roi in rois)


def _one_structure(
    samples: np.ndarray, roi: Roi, geometry: SliceGeometry, quantity: str, sd_ms: np.ndarray | None
) -> StructureStatistics:
    """Return the statistics of one ROI; ``samples`` has shape `(samples, y, x)`."""
    masks = _sample_masks(roi, samples.shape)
    inside = [sample[mask] for sample, mask in zip(samples, masks, strict=True)]
    if not all(np.all(np.isfinite(v)) for v in inside):
        raise ValueError(f"ROI {roi.name!r}: the {quantity} map is not finite everywhere inside it")
    pixels = [int(v.size) for v in inside]
    volumes = np.array(pixels) * geometry.voxel_ml
    means = [float(v.mean()) if v.size else None for v in inside]
    medians = [float(np.median(v)) if v.size else None for v in inside]
    mean_mean, mean_sd, mean_cv = _spread([m for m in means if m is not None])
    volume_mean, volume_sd, volume_cv = _spread(volumes.tolist())
    nominal = roi.nominal_ms.get(quantity)
    return StructureStatistics(
        structure=roi.name,
        quantity=quantity,
        n_samples=len(samples),
        sample_pixels=tuple(pixels),
        sample_volume_ml=tuple(float(v) for v in volumes),
        sample_mean_ms=tuple(means),
        sample_median_ms=tuple(medians),
        volume_ml=float(volume_mean if volume_mean is not None else 0.0),
        volume_sd_ml=float(volume_sd if volume_sd is not None else 0.0),
        volume_cv=volume_cv,
        mean_ms=mean_mean,
        mean_sd_ms=mean_sd,
        mean_cv=mean_cv,
        median_ms=_spread([m for m in medians if m is not None])[0],
        mean_voxel_sd_ms=None if sd_ms is None else _mean_inside(sd_ms, np.asarray(masks.any(axis=0)), roi.name),
        nominal_ms=None if nominal is None else float(nominal),
    )


def _sample_masks(roi: Roi, shape: tuple[int, ...]) -> np.ndarray:
    """Return the ROI's mask in every sample. Shape ``shape`` `(samples, y, x)` bool."""
    if roi.mask.shape not in (shape, shape[1:]):
        raise ValueError(f"ROI {roi.name!r}: mask shape {roi.mask.shape} fits neither {shape[1:]} nor {shape}")
    return np.broadcast_to(roi.mask, shape)


def _spread(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Return the mean, SD (``ddof=0``; exactly 0 for equal values) and coefficient of variation; None if undefined."""
    if not values:
        return None, None, None
    mean = float(np.mean(values))
    sd = 0.0 if min(values) == max(values) else float(np.std(values))
    return mean, sd, sd / abs(mean) if mean != 0 else None


def _mean_inside(sd_ms: np.ndarray, union: np.ndarray, name: str) -> float | None:
    """Return the mean of the SD map inside ``union`` (None when it is empty)."""
    inside = np.asarray(sd_ms, dtype=np.float64)[union]
    if not np.all(np.isfinite(inside)):
        raise ValueError(f"ROI {name!r}: the SD map is not finite everywhere inside it")
    return float(inside.mean()) if inside.size else None
