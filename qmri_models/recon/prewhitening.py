"""Noise prewhitening: coil noise covariance from a noise scan, its whitening matrix, and applying it to readouts.

As Gadgetron's NoiseAdjustGadget (``gadgets/mri_core/NoiseAdjustGadget.cpp``): the covariance sums
``data^H data`` over the noise readouts and divides by the number of samples minus one; the prewhitener is the
inverse of its Cholesky factor, so whitened noise is uncorrelated with equal power in every coil; the matrix is
scaled for the readouts it is applied to. Gadgetron scales by ``sqrt(2 * acquisition_dwell_us / noise_dwell_us *
relative_receiver_noise_bandwidth)`` (``calculate_scale_factor``; the bandwidth defaults to 0.793 without
``acquisitionSystemInformation.relativeReceiverNoiseBandwidth`` in the header), which leaves the imaging readouts'
noise with variance ``relative_receiver_noise_bandwidth`` in the real and in the imaginary part: images in SNR
units (:func:`snr_units_scale`). Our default, :func:`data_units_scale`, keeps the data's units instead: whitened
noise has, in every coil, the power the coils had on average, so white noise of equal power is left as it is and
a reconstruction scored against truth in the scanner's units stays comparable. Noise power goes with the receiver
bandwidth, ``1 / dwell``, so a noise scan read with a longer dwell than the imaging readouts is quieter by the
dwell ratio; the data-units scale takes the noise scan's own power, in which that ratio cancels.

Covariance convention: ``covariance[i, j] = E[n_i conj(n_j)]`` over the samples of coils ``i`` and ``j`` (rows are
coils, as ``numpy.cov``); the whitening matrix ``W`` is lower triangular with ``W @ covariance @ W^H`` a multiple
of the identity, applied as ``W @ data`` to data of shape `(coils, samples)`.
"""

import numpy as np

GADGETRON_RECEIVER_NOISE_BANDWIDTH = 0.793
"""Gadgetron's relative receiver noise bandwidth when the header gives none."""


def noise_covariance(noise: np.ndarray) -> np.ndarray:
    """Return the coil noise covariance of noise-only readouts.

    Parameters
    ----------
    noise : Noise readouts. Shape `(readouts, coils, samples)` complex.

    Returns
    -------
    ``sum over readouts and samples of n_i conj(n_j)``, divided by the number of samples minus one (Gadgetron's
    normalisation, also ``numpy.cov``'s without the mean). Shape `(coils, coils)` complex128, Hermitian.

    Raises
    ------
    ValueError
        If ``noise`` is not 3-D or holds fewer than two samples per coil.
    """
    if noise.ndim != 3:
        raise ValueError(f"noise must have shape (readouts, coils, samples), got {noise.shape}")
    n_readouts, n_coils, n_samples = noise.shape
    total = n_readouts * n_samples
    if total < 2:
        raise ValueError(f"noise holds {total} samples per coil; the covariance needs at least 2")
    samples = np.moveaxis(noise, 1, 0).reshape(n_coils, total).astype(np.complex128)
    return (samples @ samples.conj().T) / (total - 1)


def whitening_matrix(covariance: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Return ``scale`` times the inverse of the covariance's lower Cholesky factor.

    Parameters
    ----------
    covariance : Coil noise covariance, Hermitian positive definite. Shape `(coils, coils)` complex.
    scale : Factor on the whitener (:func:`snr_units_scale`, :func:`data_units_scale`).

    Returns
    -------
    ``W`` with ``W @ covariance @ W^H = scale**2 * I``, lower triangular. Shape `(coils, coils)` complex64.

    Raises
    ------
    ValueError
        If the covariance is not square or not positive definite (a dead or duplicated channel).
    """
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
        raise ValueError(f"covariance must be a square (coils, coils) matrix, got shape {covariance.shape}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be positive and finite, got {scale}")
    try:
        lower = np.linalg.cholesky(covariance.astype(np.complex128))
    except np.linalg.LinAlgError as error:
        power = np.real(np.diag(covariance))
        raise ValueError(
            f"the noise covariance of {len(covariance)} coils is not positive definite (coil noise powers "
            f"{np.array2string(power, precision=3)}): a dead or duplicated channel cannot be whitened"
        ) from error
    identity = np.eye(len(covariance), dtype=np.complex128)
    inverse = np.linalg.solve(lower, identity)
    return (scale * np.tril(inverse)).astype(np.complex64)


def snr_units_scale(
    acquisition_dwell_us: float,
    noise_dwell_us: float,
    receiver_noise_bandwidth: float = GADGETRON_RECEIVER_NOISE_BANDWIDTH,
) -> float:
    """Return Gadgetron's scale of the whitener: ``sqrt(2 * acquisition_dwell_us / noise_dwell_us * bandwidth)``.

    The whitened imaging readouts then have noise of variance ``receiver_noise_bandwidth`` in the real and in the
    imaginary part. A dwell time of 0 (unknown) gives 1, as in Gadgetron.

    Parameters
    ----------
    acquisition_dwell_us : Dwell time of the readouts to whiten in us.
    noise_dwell_us : Dwell time of the noise readouts in us.
    receiver_noise_bandwidth : Relative receiver noise bandwidth (the header's, else Gadgetron's 0.793).

    Returns
    -------
    The scale.
    """
    if acquisition_dwell_us < 0 or noise_dwell_us < 0 or receiver_noise_bandwidth <= 0:
        raise ValueError(
            f"dwell times must be non-negative and the receiver noise bandwidth positive, got "
            f"{acquisition_dwell_us} us, {noise_dwell_us} us and {receiver_noise_bandwidth}"
        )
    if acquisition_dwell_us == 0 or noise_dwell_us == 0:
        return 1.0
    return float(np.sqrt(2.0 * acquisition_dwell_us / noise_dwell_us * receiver_noise_bandwidth))


def data_units_scale(covariance: np.ndarray) -> float:
    """Return the scale that gives whitened noise the coils' mean noise power: ``sqrt(trace(covariance) / coils)``.

    Applied to imaging readouts read with another dwell than the noise scan, whitened noise has the imaging
    readouts' own mean coil power: both scale with the bandwidth, so the dwell ratio cancels.

    Parameters
    ----------
    covariance : Coil noise covariance of the noise scan. Shape `(coils, coils)` complex.

    Returns
    -------
    The scale.
    """
    return float(np.sqrt(np.real(np.trace(covariance)) / len(covariance)))


def prewhiten(data: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Return data with its coils whitened: ``whitening @ data`` along the coil axis.

    Parameters
    ----------
    data : Samples of every coil. Shape `(*other, coils, samples)` complex.
    whitening : Whitening matrix (:func:`whitening_matrix`). Shape `(coils, coils)` complex.

    Returns
    -------
    Whitened samples. Shape `(*other, coils, samples)` complex64.

    Raises
    ------
    ValueError
        If the data's coils are not the matrix's.
    """
    if data.ndim < 2 or data.shape[-2] != whitening.shape[0]:
        raise ValueError(
            f"data of shape {data.shape} (..., coils, samples) does not have the whitening matrix's "
            f"{whitening.shape[0]} coils"
        )
    return np.matmul(whitening.astype(np.complex64), data.astype(np.complex64, copy=False))
