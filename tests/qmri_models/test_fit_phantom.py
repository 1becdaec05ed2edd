"""The fit's SD map is honest: over many noise realisations it matches the spread of the fitted T1.

The phases are 8-coil images with the simulator's correlated coil noise, prewhitened with the covariance of a noise
scan and combined with the whitened sensitivities (SENSE at full sampling), as the chains see them.
"""

import numpy as np
import pytest

from qmri_models.fitting.maps import fit_maps
from qmri_models.protocols import IR_TI_MS, MOLLI_TI_MS
from qmri_models.recon.prewhitening import data_units_scale, noise_covariance, prewhiten, whitening_matrix
from qmri_models.signal_models import MODELS, molli_parameters_from_t1
from qmri_models.simulation.anatomy import NIST_T1_MS, sphere_phantom
from qmri_models.simulation.coils import coil_noise_covariance, coil_sensitivities, mix_coils

N_REALISATIONS = 200
PIXELS_PER_SPHERE = 12
SNR = 100.0
N_COILS = 8
N_NOISE_SAMPLES = 8192


def complex_noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float, factor: np.ndarray) -> np.ndarray:
    """Noise of SD ``sd`` per real and imaginary part (coil RMS) with coil covariance ``factor @ factor^H``."""
    white = sd * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    return mix_coils(white, factor)


def prewhitened_sense(clean: np.ndarray, mask: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Return noisy realisations of ``clean`` seen through 8 correlated coils, prewhitened and SENSE-combined.

    Parameters
    ----------
    clean : Noise-free signal of the pixels. Shape `(phases, pixels)`.
    mask : Where the pixels are. Shape `(y, x)` bool.
    sigma : Coil-RMS noise SD per real and imaginary part.
    rng : Random generator.

    Returns
    -------
    Combined images. Shape `(phases, realisations, pixels)` complex.
    """
    covariance = coil_noise_covariance(N_COILS, rng)
    factor = np.linalg.cholesky(covariance)
    sens = coil_sensitivities(N_COILS, mask.shape[0], rng, covariance)[:, mask]
    coils = clean[:, None, None, :] * sens[None, None]  # (phases, realisations, coils, pixels)
    noisy = coils + complex_noise(rng, (clean.shape[0], N_REALISATIONS, N_COILS, clean.shape[1]), sigma, factor)
    estimate = noise_covariance(complex_noise(rng, (1, N_COILS, N_NOISE_SAMPLES), sigma, factor))
    whitening = whitening_matrix(estimate, data_units_scale(estimate))
    sens_w = prewhiten(sens, whitening)
    combined = np.einsum("cp,...cp->...p", sens_w.conj(), prewhiten(noisy, whitening))
    return combined / np.sum(np.abs(sens_w) ** 2, axis=0)


def sphere_pixels(labels: np.ndarray) -> np.ndarray:
    """Return a mask with the first PIXELS_PER_SPHERE pixels (raster order) of every sphere."""
    mask = np.zeros(labels.shape, bool)
    for label in range(2, labels.max() + 1):
        mask.ravel()[np.flatnonzero(labels == label)[:PIXELS_PER_SPHERE]] = True
    return mask


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inversion_recovery", "molli"])
def test_reported_sd_matches_empirical_sd_per_sphere(name: str) -> None:
    """Mean reported SD within 20% of the empirical SD of T1 over 200 realisations, in every sphere it can measure.

    The SD is a linearisation, honest where the protocol measures T1. Inversion recovery (TIs 50-2500 ms) is held to
    13 of the 14 NIST spheres: at 21 ms the signal has recovered 90% by the first TI, about 1 in 4 fits ends on a
    bound and the reported SD is 26% above the spread (measured). MOLLI (first TI 251 ms) is held to the spheres
    from 485 ms: at 342 ms the null point (about 240 ms) falls before the first TI, the polarity is ambiguous and
    the fitted T1 has heavy tails (spread 25 ms against a reported 8 ms, measured).
    """
    truth = sphere_phantom(64)
    times = np.asarray(IR_TI_MS if name == "inversion_recovery" else MOLLI_TI_MS)
    model = MODELS[name]
    t1 = np.where(truth.labels > 0, truth.t1_ms, 1.0)
    if name == "inversion_recovery":
        signal = model.signal_array(times, pd=truth.pd, b=np.full(t1.shape, 1.96), t1_ms=t1)
    else:
        a, b, t1_star = molli_parameters_from_t1(t1, truth.pd, 0.96)
        signal = model.signal_array(times, a=a, b=b, t1_star_ms=t1_star)
    mask = sphere_pixels(truth.labels)
    sigma = np.abs(signal)[:, truth.labels > 0].mean(axis=1).max() / SNR
    rng = np.random.default_rng(7)
    n_pixels = int(mask.sum())
    clean = signal[:, mask]  # (phases, pixels)
    noisy = prewhitened_sense(clean, mask, sigma, rng)
    maps = fit_maps(
        model,
        noisy.reshape(times.size, N_REALISATIONS, n_pixels),
        times,
        mask=np.ones((N_REALISATIONS, n_pixels), bool),
    )
    fitted, reported = maps.values["T1"], maps.sds["T1"]  # (realisations, pixels)
    labels = truth.labels[mask]
    lowest = 30.0 if name == "inversion_recovery" else 400.0
    checked = 0
    for index, t1_ms in enumerate(NIST_T1_MS):
        if t1_ms < lowest:
            continue
        pixels = labels == index + 2
        empirical = fitted[:, pixels].std(axis=0, ddof=1).mean()
        mean_reported = reported[:, pixels].mean()
        assert abs(mean_reported / empirical - 1.0) < 0.2, (
            f"sphere {t1_ms} ms: SD {mean_reported:.3g} vs {empirical:.3g}"
        )
        assert abs(np.median(fitted[:, pixels]) / t1_ms - 1.0) < 0.03
        checked += 1
    assert checked == (13 if name == "inversion_recovery" else 5)
