"""Smooth multi-coil receive sensitivities."""

import numpy as np
from scipy.ndimage import gaussian_filter


def coil_sensitivities(n_coils: int, matrix: int, rng: np.random.Generator) -> np.ndarray:
    """Return smooth complex coil sensitivities, normalised to unit root-sum-of-squares everywhere.

    Coils sit on a ring around the field of view at a random rotation; each has a Biot-Savart-like magnitude
    fall-off and a smooth random phase. Unit sum of squares makes the coil-combined (SENSE or ESPIRiT) image equal
    the object, so a reconstruction can be scored against the stored truth directly.

    Parameters
    ----------
    n_coils : Number of receive coils, at least 1.
    matrix : Image size in pixels (square).
    rng : Random generator.

    Returns
    -------
    Sensitivities. Shape `(coils, y, x)` complex64.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be at least 1, got {n_coils}")
    y, x = np.mgrid[-1 : 1 : matrix * 1j, -1 : 1 : matrix * 1j]
    rotation = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(1.3, 1.7)
    width = rng.uniform(0.8, 1.2)
    sens = np.empty((n_coils, matrix, matrix), dtype=np.complex128)
    for c in range(n_coils):
        angle = rotation + 2 * np.pi * c / n_coils
        dist2 = (x - radius * np.cos(angle)) ** 2 + (y - radius * np.sin(angle)) ** 2
        phase = gaussian_filter(rng.standard_normal((matrix, matrix)), sigma=matrix / 6)
        phase *= np.pi / max(np.abs(phase).max(), 1e-12)
        sens[c] = np.exp(1j * (angle + phase)) / (1.0 + dist2 / width**2)
    sens /= np.sqrt(np.sum(np.abs(sens) ** 2, axis=0, keepdims=True))
    return sens.astype(np.complex64)
