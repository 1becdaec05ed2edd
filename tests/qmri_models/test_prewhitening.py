"""Prewhitening against independent references: numpy's covariance, scipy's Cholesky, whitened noise ~ identity."""

import numpy as np
import pytest
import scipy.linalg

from qmri_models.metrics import nrmse
from qmri_models.recon.cartesian import calibration_lines, centered_fft2, phase_sensitivities, reconstruct_phases
from qmri_models.recon.prewhitening import (
    data_units_scale,
    noise_covariance,
    prewhiten,
    snr_units_scale,
    whitening_matrix,
)
from qmri_models.simulation.coils import coil_noise_covariance, mix_coils
from qmri_models.simulation.scan import NOISE_DWELL_RATIO, ScanSettings, simulate_scan


def _noise(covariance: np.ndarray, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Return complex noise of coil covariance ``covariance``: white noise of variance 2 mixed by chol(cov / 2)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return mix_coils(white, np.linalg.cholesky(covariance / 2)).astype(np.complex64)


@pytest.mark.parametrize("n_coils", [1, 4, 12])
def test_covariance_equals_numpy_cov(n_coils: int) -> None:
    rng = np.random.default_rng(n_coils)
    noise = (rng.standard_normal((5, n_coils, 33)) + 1j * rng.standard_normal((5, n_coils, 33))).astype(np.complex64)
    flat = np.moveaxis(noise, 1, 0).reshape(n_coils, -1)
    expected = np.atleast_2d(np.cov(flat))  # np.cov subtracts the mean; remove it first so both agree
    centred = noise - flat.mean(axis=1)[None, :, None]
    np.testing.assert_allclose(noise_covariance(centred), expected, rtol=1e-5, atol=1e-6)


def test_whitening_is_the_inverse_of_scipys_cholesky_factor() -> None:
    covariance = coil_noise_covariance(8, np.random.default_rng(3))
    expected = scipy.linalg.inv(scipy.linalg.cholesky(covariance, lower=True))
    np.testing.assert_allclose(whitening_matrix(covariance, 2.0), 2.0 * expected, rtol=1e-5, atol=1e-6)
    whitening = whitening_matrix(covariance)
    np.testing.assert_allclose(whitening @ covariance @ whitening.conj().T, np.eye(8), atol=1e-5)


def test_whitened_noise_covariance_is_identity() -> None:
    """Covariance estimated from one noise draw whitens an independent draw to ~identity (1/sqrt(N) error)."""
    truth = coil_noise_covariance(8, np.random.default_rng(1))
    assert np.abs(truth - np.diag(np.diag(truth))).max() > 0.1  # correlated to begin with
    estimate = noise_covariance(_noise(truth, (64, 8, 128), seed=2))
    whitened = prewhiten(_noise(truth, (64, 8, 128), seed=3), whitening_matrix(estimate))
    np.testing.assert_allclose(noise_covariance(whitened), np.eye(8), atol=0.05)
    assert whitened.dtype == np.complex64


def test_snr_units_follow_gadgetron_with_a_dwell_ratio() -> None:
    """Noise read at twice the imaging dwell is half as powerful; Gadgetron's scale gives the imaging noise unit SD."""
    truth = coil_noise_covariance(6, np.random.default_rng(4))
    noise_scan = _noise(truth / 2, (64, 6, 128), seed=5)  # dwell 5 us: half the 2.5 us readouts' bandwidth
    scale = snr_units_scale(2.5, 5.0, receiver_noise_bandwidth=1.0)
    assert scale == pytest.approx(1.0)
    whitened = prewhiten(_noise(truth, (64, 6, 128), seed=6), whitening_matrix(noise_covariance(noise_scan), scale))
    for part in (whitened.real, whitened.imag):
        assert part.std() == pytest.approx(1.0, rel=0.03)
    assert snr_units_scale(2.5, 5.0) == pytest.approx(np.sqrt(0.793))
    assert snr_units_scale(0.0, 5.0) == 1.0


def test_data_units_keep_the_mean_coil_power_whatever_the_noise_dwell() -> None:
    truth = coil_noise_covariance(6, np.random.default_rng(7))
    data = _noise(truth, (64, 6, 128), seed=8)
    for dwell_ratio in (1.0, 2.0):
        estimate = noise_covariance(_noise(truth / dwell_ratio, (64, 6, 128), seed=9))
        whitened = prewhiten(data, whitening_matrix(estimate, data_units_scale(estimate)))
        assert np.mean(np.abs(whitened) ** 2) == pytest.approx(np.trace(truth).real / 6, rel=0.03)


def test_equal_white_noise_is_left_as_it_is_in_data_units() -> None:
    covariance = 0.3 * np.eye(4)
    np.testing.assert_allclose(whitening_matrix(covariance, data_units_scale(covariance)), np.eye(4), atol=1e-6)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="not positive definite"):
        whitening_matrix(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"shape \(readouts, coils, samples\)"):
        noise_covariance(np.zeros((4, 8), np.complex64))
    with pytest.raises(ValueError, match="4 coils"):
        prewhiten(np.zeros((3, 10), np.complex64), np.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        noise_covariance(np.zeros((1, 2, 1), np.complex64))


def test_simulated_coil_noise_has_the_stated_covariance_and_snr() -> None:
    """Residual k-space noise has the slice's covariance (neighbours correlated 0.1-0.4, levels unequal), the noise
    scan the same at 1/NOISE_DWELL_RATIO the power, and the prewhitened sensitivities unit root-sum-of-squares, so
    the optimal combination of a fully sampled image has the stated noise SD."""
    settings = ScanSettings(contrast="t2prep", matrix=64, n_coils=8, snr=30.0, seed=5)
    (sim,) = simulate_scan(settings)
    residual = sim.kdata - centered_fft2(sim.images[:, None] * sim.sens[None])
    measured = noise_covariance(np.moveaxis(residual, 1, 0).reshape(1, 8, -1))
    np.testing.assert_allclose(measured, sim.noise_covariance, atol=0.03 * 2 * sim.noise_sd**2)
    np.testing.assert_allclose(
        NOISE_DWELL_RATIO * noise_covariance(sim.noise), sim.noise_covariance, atol=0.05 * 2 * sim.noise_sd**2
    )
    unit = sim.noise_covariance / (2 * sim.noise_sd**2)
    assert np.mean(np.diag(unit).real) == pytest.approx(1.0)
    assert np.ptp(np.diag(unit).real) > 0.2
    neighbours = np.abs(np.diag(unit, 1)) / np.sqrt(np.diag(unit)[:-1].real * np.diag(unit)[1:].real)
    assert np.all((neighbours > 0.1) & (neighbours < 0.4))
    whitening = whitening_matrix(sim.noise_covariance, data_units_scale(sim.noise_covariance))
    whitened_sens = np.einsum("ij,jyx->iyx", whitening, sim.sens)
    np.testing.assert_allclose(np.sum(np.abs(whitened_sens) ** 2, axis=0), 1.0, rtol=1e-4)
    white = simulate_scan(ScanSettings(contrast="t2prep", matrix=64, n_coils=8, snr=30.0, seed=5, noise="white"))[0]
    np.testing.assert_allclose(white.noise_covariance, 2 * white.noise_sd**2 * np.eye(8))
    np.testing.assert_allclose(np.sum(np.abs(white.sens) ** 2, axis=0), 1.0, rtol=1e-5)


def test_prewhitening_lowers_4x_cg_sense_nrmse_with_correlated_noise() -> None:
    """As the chains reconstruct (ESPIRiT maps from the data, 10 CG-SENSE iterations): the prewhitened phases are
    closer to the truth (bench/bench_prewhitening.py measures it at 128^2, 12 coils)."""
    (sim,) = simulate_scan(
        ScanSettings(contrast="molli", matrix=64, n_coils=8, acceleration=4, acs_fraction=0.16, snr=20.0, seed=0)
    )
    covariance = noise_covariance(sim.noise)
    whitening = whitening_matrix(covariance, data_units_scale(covariance))
    tissue = sim.truth.labels > 0

    def phase_nrmse(kdata: np.ndarray) -> float:
        sens = phase_sensitivities(kdata, calibration_lines(sim.sampled))
        images = reconstruct_phases(kdata, sim.sampled, sens, method="cg_sense", max_iter=10)
        return float(np.mean([nrmse(np.abs(i), np.abs(t), tissue) for i, t in zip(images, sim.images, strict=True)]))

    whitened = prewhiten(sim.kdata.reshape(*sim.kdata.shape[:2], -1), whitening).reshape(sim.kdata.shape)
    assert phase_nrmse(whitened) < 0.95 * phase_nrmse(sim.kdata)
