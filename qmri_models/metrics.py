"""Image quality metrics against a reference, inside a mask."""

import numpy as np


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
