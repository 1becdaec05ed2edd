"""Image quality metrics against a reference, inside a mask."""

from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity


def nrmse(estimate: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Return the normalised root-mean-square error ``||estimate - reference|| / ||reference||``.

    Parameters
    ----------
    estimate : Estimated values. Shape `(...)`.
    reference : Reference values, same shape.
    mask : Pixels to score, same shape (all pixels if None).

    Returns
    -------
    NRMSE (0 is perfect).
    """
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {estimate.shape} and reference {reference.shape} differ in shape")
    if mask is None:
        mask = np.ones(reference.shape, dtype=bool)
    diff = (estimate - reference)[mask]
    norm = np.linalg.norm(reference[mask])
    if norm == 0:
        raise ValueError("the reference is zero inside the mask")
    return float(np.linalg.norm(diff) / norm)


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Return the zero-mean normalised cross-correlation of two images (1 means identical up to gain and offset).

    Parameters
    ----------
    a : First image. Shape `(...)`.
    b : Second image, same shape.

    Returns
    -------
    Correlation in [-1, 1].
    """
    if a.shape != b.shape:
        raise ValueError(f"images {a.shape} and {b.shape} differ in shape")
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def masked_ssim_map(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return scikit-image's SSIM map of two maps, both zeroed outside the mask, data range of the masked truth.

    Parameters
    ----------
    estimate : Estimated map. Shape `(y, x)`.
    truth : True map. Shape `(y, x)`.
    mask : Pixels that count (the tissue). Shape `(y, x)` bool, not empty.

    Returns
    -------
    SSIM of every pixel (average it over the mask). Shape `(y, x)` float64.
    """
    ssim_map: np.ndarray = structural_similarity(
        np.where(mask, truth, 0.0).astype(np.float64),
        np.where(mask, estimate, 0.0).astype(np.float64),
        data_range=float(truth[mask].max() - truth[mask].min()) or 1.0,
        full=True,
    )[1]
    return ssim_map


@dataclass(frozen=True)
class TissueScore:
    """A map's error in one tissue class."""

    tissue: str
    n_pixels: int
    median_ape_percent: float
    """Median absolute percentage error, %."""
    mape_percent: float
    """Mean absolute percentage error (MAPE, the MRF papers' figure), %."""
    nrmse: float
    ssim: float
    """Mean structural similarity over the class's pixels (SSIM map of the whole tissue, data range of the truth)."""


def score_map_per_tissue(
    estimate: np.ndarray, truth: np.ndarray, labels: np.ndarray, label_names: list[str]
) -> list[TissueScore]:
    """Return the error of a parametric map in each tissue class (label 0, background, is skipped).

    Parameters
    ----------
    estimate : Estimated map, e.g. T1 in ms. Shape `(y, x)`.
    truth : True map in the same unit. Shape `(y, x)`.
    labels : Tissue class of every pixel (index into ``label_names``). Shape `(y, x)` int.
    label_names : Name of every class.

    Returns
    -------
    One score per class present, in label order.
    """
    tissue = labels > 0
    if not tissue.any():
        raise ValueError("no tissue pixels (all labels are 0)")
    ssim_map = masked_ssim_map(estimate, truth, tissue)
    scores = []
    for index, name in enumerate(label_names):
        pixels = labels == index
        if index == 0 or not pixels.any():
            continue
        ape = 100.0 * np.abs(estimate[pixels] - truth[pixels]) / np.abs(truth[pixels])
        scores.append(
            TissueScore(
                tissue=name,
                n_pixels=int(pixels.sum()),
                median_ape_percent=float(np.median(ape)),
                mape_percent=float(np.mean(ape)),
                nrmse=nrmse(estimate, truth, pixels),
                ssim=float(ssim_map[pixels].mean()),
            )
        )
    return scores
