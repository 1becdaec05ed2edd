"""Tissue classes of the maps themselves: a Gaussian mixture on log T1 (or log T1 and log T2), plus outliers.

The mixture runs on the logarithm of the relaxation times: tissue spreads are roughly proportional to their value,
so in log space the classes have comparable widths. Classes are ordered by their mean T1 and named in that order.

The default classes are those of a head slice inside its fit mask: fat, white matter, grey matter and CSF. A fit mask
of a head holds the scalp fat; with only white matter, grey matter and CSF, the mixture spends a class on the fat
instead (measured on the simulator's true T1 maps, 64^2, seeds 0 to 11: in 6 of 12 slices the lowest class was the
fat and white matter took the name grey matter). With a brain-only mask, pass ``BRAIN_CLASSES``.

A pixel is an outlier (lesion, artefact, tissue none of the classes describes) when its value is unlikely under every
class: the chi-square tail probability of its squared Mahalanobis distance to each class is below ``outlier_p``.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2
from sklearn.mixture import GaussianMixture

HEAD_CLASSES: tuple[str, ...] = ("fat", "white_matter", "grey_matter", "csf")
"""Tissue classes of a head slice in order of increasing T1 (at 3 T about 380, 900, 1500 and 4000 ms)."""
BRAIN_CLASSES: tuple[str, ...] = ("white_matter", "grey_matter", "csf")
"""Tissue classes inside a brain-only mask, in order of increasing T1."""
T2_CLASSES: tuple[str, ...] = ("white_matter", "grey_matter_and_fat", "long_t2", "csf")
"""Classes of a head slice's T2 map alone, in order of increasing T2: at 3 T fat (65-135 ms) and grey matter (80-110
ms) share their T2, and lesions, edema and CSF partial volume lie between them and CSF."""


def classes_for(quantity: str) -> tuple[str, ...]:
    """Return the default classes of a map of ``quantity`` classified alone: ``T2_CLASSES`` for T2, else T1's."""
    return T2_CLASSES if quantity.upper() == "T2" else HEAD_CLASSES


OUTSIDE = 0
"""Label of the pixels outside the mask (not classified)."""
OUTSIDE_NAME = "outside"
OUTLIER_NAME = "outlier"
"""Name of the last label: pixels no class explains (lesions among them)."""
OUTLIER_P = 1e-3
"""Default tail probability under every class below which a pixel is an outlier."""
REG_COVAR = 1e-4
"""Variance added to every class covariance, in (log ms)^2: a floor of 1 % SD, so that a class of equal values (a
truth map, a phantom sphere) keeps a finite width."""
N_INIT = 3
"""Mixture fits from different k-means starts; the one with the highest likelihood is kept."""


@dataclass(frozen=True)
class TissueClasses:
    """Tissue class of every pixel of a map.

    Label values: ``OUTSIDE`` (0) outside the mask, ``1..k`` the classes in order of increasing mean T1, ``k + 1``
    the outliers; ``label_names[label]`` names each.
    """

    labels: np.ndarray = field(repr=False)
    """Label of each pixel. Shape `(y, x)` uint8."""
    label_names: tuple[str, ...]
    """``("outside", *class names, "outlier")``."""
    class_t1_ms: tuple[float, ...]
    """Geometric mean T1 of each class in ms, increasing."""
    class_t2_ms: tuple[float, ...] | None
    """Geometric mean T2 of each class in ms, or None when the mixture ran on T1 alone."""

    @property
    def outlier_label(self) -> int:
        """Label value of the outliers."""
        return len(self.label_names) - 1

    @property
    def names_by_label(self) -> dict[int, str]:
        """Name of every label value except ``OUTSIDE``: the structures the classification defines."""
        return {value: name for value, name in enumerate(self.label_names) if value != OUTSIDE}


def classify_tissues(
    t1_ms: np.ndarray,
    t2_ms: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    class_names: Sequence[str] = HEAD_CLASSES,
    outlier_p: float = OUTLIER_P,
    seed: int = 0,
) -> TissueClasses:
    """Return the tissue classes of a T1 map (and T2 map) from a Gaussian mixture on their logarithms.

    Parameters
    ----------
    t1_ms : T1 in ms. Shape `(y, x)`.
    t2_ms : T2 in ms of the same slice, or None to classify on T1 alone. Shape `(y, x)`.
    mask : Pixels to classify (e.g. the fit mask), all with positive finite maps; None for every pixel whose maps
        are positive and finite. Shape `(y, x)` bool.
    class_names : Name of each class in order of increasing T1; their number is the number of classes.
    outlier_p : A pixel whose chi-square tail probability is below this under every class is an outlier, in (0, 1).
    seed : Seed of the mixture's k-means starts; the same seed and maps give the same classes.

    Returns
    -------
    The label map, its names and the class means.
    """
    features, mask = _log_features(t1_ms, t2_ms, mask)
    n_classes = len(class_names)
    if n_classes < 1 or len(set(class_names)) != n_classes or {OUTSIDE_NAME, OUTLIER_NAME} & set(class_names):
        raise ValueError(f"class_names must be distinct, not {OUTSIDE_NAME!r} or {OUTLIER_NAME!r}, got {class_names}")
    if not 0.0 < outlier_p < 1.0:
        raise ValueError(f"outlier_p must lie in (0, 1), got {outlier_p}")
    if len(features) < 2 * n_classes:
        raise ValueError(f"{n_classes} classes need at least {2 * n_classes} pixels in the mask, got {len(features)}")
    mixture = GaussianMixture(
        n_components=n_classes, covariance_type="full", reg_covar=REG_COVAR, n_init=N_INIT, random_state=seed
    ).fit(features)
    order = np.argsort(mixture.means_[:, 0], kind="stable")
    rank = np.empty(n_classes, dtype=np.int64)
    rank[order] = np.arange(n_classes)
    classes = rank[mixture.predict(features)] + 1
    classes[_outliers(features, mixture, outlier_p)] = n_classes + 1
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[mask] = classes
    means_ms = np.exp(mixture.means_[order])
    return TissueClasses(
        labels=labels,
        label_names=(OUTSIDE_NAME, *class_names, OUTLIER_NAME),
        class_t1_ms=tuple(float(m) for m in means_ms[:, 0]),
        class_t2_ms=None if t2_ms is None else tuple(float(m) for m in means_ms[:, 1]),
    )


def _log_features(
    t1_ms: np.ndarray, t2_ms: np.ndarray | None, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the log maps of the mask's pixels (shape `(pixels, features)`) and the mask (shape `(y, x)` bool)."""
    maps = [np.asarray(t1_ms, dtype=np.float64)] + ([] if t2_ms is None else [np.asarray(t2_ms, dtype=np.float64)])
    if maps[0].ndim != 2:
        raise ValueError(f"t1_ms must be a 2D map (y, x), got shape {maps[0].shape}")
    if any(m.shape != maps[0].shape for m in maps):
        raise ValueError(f"t1_ms and t2_ms must have one shape, got {maps[0].shape} and {maps[-1].shape}")
    valid = np.logical_and.reduce([np.isfinite(m) & (m > 0) for m in maps])
    if mask is None:
        mask = valid
    else:
        mask = np.asarray(mask)
        if mask.shape != maps[0].shape or mask.dtype != np.bool_:
            raise ValueError(f"mask must be bool with the maps' shape {maps[0].shape}, got {mask.dtype} {mask.shape}")
        if n_invalid := int(np.count_nonzero(mask & ~valid)):
            raise ValueError(f"{n_invalid} pixels in the mask have a map that is not positive and finite")
    return np.stack([np.log(m[mask]) for m in maps], axis=1), mask


def _outliers(features: np.ndarray, mixture: GaussianMixture, outlier_p: float) -> np.ndarray:
    """Return which pixels are unlikely under every class of the mixture. Shape `(pixels,)` bool."""
    limit = chi2.isf(outlier_p, df=features.shape[1])
    distances = [
        np.sum(((features - mean) @ precision_cholesky) ** 2, axis=1)
        for mean, precision_cholesky in zip(mixture.means_, mixture.precisions_cholesky_, strict=True)
    ]
    return np.all(np.stack(distances) > limit, axis=0)
