"""Smooth multi-coil receive sensitivities and the coils' correlated receiver noise."""

import numpy as np
from scipy.ndimage import gaussian_filter


def coil_sensitivities(
    n_coils: int, matrix: int, rng: np.random.Generator, noise_covariance: np.ndarray | None = None
) -> np.ndarray:
    """Return smooth complex coil sensitivities, normalised to unit root-sum-of-squares everywhere.

    Coils sit on a ring around the field of view at a random rotation; each has a Biot-Savart-like magnitude
    fall-off and a smooth random phase. Unit sum of squares makes the coil-combined (SENSE or ESPIRiT) image equal
    the object, so a reconstruction can be scored against the stored truth directly. With correlated noise the sum
    is taken in the noise's metric, ``S^H inv(noise_covariance) S = 1``: the sensitivities of the prewhitened coils
    (``qmri_models.recon.prewhitening``, data units) then have unit root-sum-of-squares, and the combined image of
    prewhitened data, the SNR-optimal one, equals the object.

    Parameters
    ----------
    n_coils : Number of receive coils, at least 1.
    matrix : Image size in pixels (square).
    rng : Random generator.
    noise_covariance : Coil noise covariance with unit mean diagonal (``coil_noise_covariance``), or None for
        white noise of equal power (the identity). Shape `(coils, coils)` complex.

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
    if noise_covariance is None:
        power = np.sum(np.abs(sens) ** 2, axis=0, keepdims=True)
    else:
        weighted = np.linalg.solve(noise_covariance, sens.reshape(n_coils, -1)).reshape(sens.shape)
        power = np.real(np.sum(sens.conj() * weighted, axis=0, keepdims=True))
    sens /= np.sqrt(power)
    return sens.astype(np.complex64)


def coil_noise_covariance(n_coils: int, rng: np.random.Generator) -> np.ndarray:
    """Return a realistic receive-coil noise covariance, with unit mean diagonal.

    The coils are the ring of ``coil_sensitivities`` (index order is ring order): neighbours share flux and their
    noise correlates with a coefficient of magnitude 0.1 to 0.4 and a small phase (up to 0.3 rad), next neighbours
    0 to 0.05, others none; coil noise levels (SD) differ by up to a factor of two (0.7 to 1.4 before
    normalisation). The off-diagonal magnitudes of every row sum to less than one, so the matrix is positive
    definite by Gershgorin.

    Parameters
    ----------
    n_coils : Number of receive coils, at least 1.
    rng : Random generator.

    Returns
    -------
    ``E[n_i conj(n_j)]`` for noise of mean coil power 1. Shape `(coils, coils)` complex128, Hermitian.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be at least 1, got {n_coils}")
    correlation = np.eye(n_coils, dtype=np.complex128)
    for i in range(n_coils):
        for j in range(i + 1, n_coils):
            distance = min(j - i, n_coils - (j - i))
            if distance > 2:
                continue
            magnitude = rng.uniform(0.1, 0.4) if distance == 1 else rng.uniform(0.0, 0.05)
            correlation[i, j] = magnitude * np.exp(1j * rng.uniform(-0.3, 0.3))
            correlation[j, i] = np.conj(correlation[i, j])
    levels = rng.uniform(0.7, 1.4, n_coils)
    levels /= np.sqrt(np.mean(levels**2))
    return levels[:, None] * correlation * levels[None, :]


def mix_coils(noise: np.ndarray, factor: np.ndarray | None, axis: int = -2) -> np.ndarray:
    """Return white coil noise given the covariance ``factor @ factor^H`` (times its own) by mixing the coils.

    Parameters
    ----------
    noise : Independent noise of equal power in every coil. Shape `(..., coils, ...)` complex, coils at ``axis``.
    factor : Lower Cholesky factor of the target covariance with unit mean diagonal, or None to leave the noise
        white. Shape `(coils, coils)` complex.
    axis : The coil axis of ``noise``.

    Returns
    -------
    ``factor @ noise`` along the coil axis, in ``noise``'s dtype (``noise`` itself when ``factor`` is None).
    """
    if factor is None:
        return noise
    mixed = np.moveaxis(noise, axis, -1) @ factor.T.astype(noise.dtype)
    return np.moveaxis(mixed, -1, axis)
