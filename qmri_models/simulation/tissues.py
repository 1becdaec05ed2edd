"""Tissue classes, their 3 T relaxation ranges, and per-pixel ground-truth parameter maps.

The ranges span the spread of published in-vivo values at 3 T, so that drawn truths cover what a MOLLI T1 or a
T2-prepared T2 map of a real head shows:

- White and grey matter T1 and T2: Wansapura et al., JMRI 1999 (3 T brain relaxometry; WM T1 about 830 ms, GM about
  1330 ms) and Stanisz et al., MRM 2005 (3 T; WM 1084/69 ms, GM 1820/99 ms). Assländer, MRM 2024, reviews 3 T
  white-matter T1 reported from 0.6 to 1.1 s depending on the method; Look-Locker methods such as MOLLI sit low.
- CSF: T1 about 4 s and T2 well above 1 s at 3 T (Lu et al., JMRI 2005; Rooney et al., MRM 2007).
- Subcutaneous fat (apparent mono-exponential values): de Bazelaire et al., Radiology 2004 (3 T, T1 about 380 ms,
  T2 about 70 ms) and Gold et al., AJR 2004 (3 T, T1 about 370 ms, T2 about 130 ms).
- White-matter lesions (multiple-sclerosis-like): T1 and T2 raised between normal white matter and CSF, as in 3 T
  lesion relaxometry; the range is deliberately broad.
- Proton density as water content relative to CSF: WM about 0.69, GM about 0.80 (Neeb et al., NeuroImage 2006).
"""

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

TISSUE_CLASSES: tuple[str, ...] = ("background", "white_matter", "grey_matter", "csf", "fat", "lesion")

VARIATION_SD = 0.02
"""Standard deviation of the smooth multiplicative variation of each parameter (2 %)."""
VARIATION_LIMIT = 0.05
"""The multiplicative variation is clipped to 1 plus or minus this (5 %)."""
VARIATION_SMOOTHING = 1 / 16
"""Gaussian smoothing width of the variation as a fraction of the image size."""


@dataclass(frozen=True)
class TissueRange:
    """Range of plausible values of one tissue class; each pair is (low, high)."""

    t1_ms: tuple[float, float]
    t2_ms: tuple[float, float]
    pd: tuple[float, float]


TISSUE_RANGES_3T: dict[str, TissueRange] = {
    "white_matter": TissueRange(t1_ms=(750.0, 1100.0), t2_ms=(60.0, 85.0), pd=(0.65, 0.73)),
    "grey_matter": TissueRange(t1_ms=(1250.0, 1850.0), t2_ms=(80.0, 110.0), pd=(0.76, 0.86)),
    "csf": TissueRange(t1_ms=(3700.0, 4500.0), t2_ms=(1400.0, 2000.0), pd=(0.95, 1.0)),
    "fat": TissueRange(t1_ms=(340.0, 420.0), t2_ms=(65.0, 135.0), pd=(0.85, 0.95)),
    "lesion": TissueRange(t1_ms=(1100.0, 1700.0), t2_ms=(90.0, 180.0), pd=(0.74, 0.90)),
}


@dataclass(frozen=True)
class ParameterMaps:
    """Ground truth of one slice. All arrays shape (y, x).

    Attributes
    ----------
    t1_ms : T1 in ms, 0 in background. Shape `(y, x)` float32.
    t2_ms : T2 in ms, 0 in background. Shape `(y, x)` float32.
    pd : Proton density, 0 to 1, 0 in background. Shape `(y, x)` float32.
    labels : Tissue of each pixel, an index into ``label_names``. Shape `(y, x)` uint8.
    label_names : Name of each label value; label 0 is the background.
    """

    t1_ms: np.ndarray
    t2_ms: np.ndarray
    pd: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.t1_ms, self.t2_ms, self.pd, self.labels)}
        if len(shapes) != 1 or self.labels.ndim != 2:
            raise ValueError(f"parameter maps must share one 2D shape, got shapes {sorted(shapes)}")
        if self.labels.size and int(self.labels.max()) >= len(self.label_names):
            raise ValueError(f"label {int(self.labels.max())} has no name in {self.label_names}")


def draw_parameter_maps(labels: np.ndarray, rng: np.random.Generator) -> ParameterMaps:
    """Return per-pixel T1, T2 and PD for a tissue label image.

    Each class gets one mean T1, T2 and PD drawn uniformly from its ``TISSUE_RANGES_3T`` range (always drawn for
    every class in ``TISSUE_CLASSES`` order, so the generator advances the same way whatever the image holds). Each
    parameter is then multiplied by its own smooth random field of about 2 % SD, clipped to plus or minus 5 %.
    PD is clipped to at most 1. Background stays 0.

    Parameters
    ----------
    labels : Tissue class of each pixel, an index into ``TISSUE_CLASSES``. Shape `(y, x)` integer.
    rng : Random generator.

    Returns
    -------
    Parameter maps with ``label_names`` equal to ``TISSUE_CLASSES``.
    """
    labels = _checked_labels(labels)
    means = _draw_class_means(rng)
    maps = [means[i][labels] * _smooth_variation(labels.shape, rng) for i in range(3)]
    t1, t2, pd = (m.astype(np.float32) for m in maps)
    return ParameterMaps(t1_ms=t1, t2_ms=t2, pd=np.minimum(pd, 1.0), labels=labels, label_names=TISSUE_CLASSES)


def _checked_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as uint8 after checking it is a 2D image of valid class indices. Shape `(y, x)`."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2D integer image, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(TISSUE_CLASSES)):
        raise ValueError(f"labels must lie in 0..{len(TISSUE_CLASSES) - 1}, got {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def _draw_class_means(rng: np.random.Generator) -> np.ndarray:
    """Return the drawn mean T1 (ms), T2 (ms) and PD of every class, zero for background. Shape `(3, classes)`."""
    means = np.zeros((3, len(TISSUE_CLASSES)))
    for c, name in enumerate(TISSUE_CLASSES[1:], start=1):
        r = TISSUE_RANGES_3T[name]
        means[:, c] = [rng.uniform(*r.t1_ms), rng.uniform(*r.t2_ms), rng.uniform(*r.pd)]
    return means


def _smooth_variation(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Return a smooth multiplicative field near 1 (SD ``VARIATION_SD``, clipped). Shape ``shape``."""
    noise = gaussian_filter(rng.standard_normal(shape), sigma=max(shape) * VARIATION_SMOOTHING, mode="reflect")
    noise /= max(float(noise.std()), 1e-12)
    return 1.0 + np.clip(VARIATION_SD * noise, -VARIATION_LIMIT, VARIATION_LIMIT)
