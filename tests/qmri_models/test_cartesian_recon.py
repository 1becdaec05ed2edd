"""Cartesian recon: coil maps from few calibration lines, and CG-SENSE / ESPIRiT that stop when asked."""

import logging
import threading
import time

import numpy as np
import pytest
import sigpy.mri.app as mri_app

from qmri_models.interrupt import Interrupted, interruptible
from qmri_models.recon.cartesian import (
    MIN_ESPIRIT_LINES,
    calibration_phase,
    cg_sense,
    espirit_sensitivities,
    phase_sensitivities,
    reconstruct_phases,
)
from qmri_models.simulation.sampling import acs_lines
from qmri_models.simulation.scan import ScanSettings, SimulatedSlice, simulate_scan


def _molli(n_acs: int, seed: int, *, matrix: int = 64, n_coils: int = 8) -> tuple[SimulatedSlice, np.ndarray]:
    """A 3x MOLLI slice with ``n_acs`` calibration lines, and those lines.

    White coil noise, as after the chains' prewhitening: these tests are about coil maps and SENSE, and
    tests/qmri_models/test_prewhitening.py about correlated noise.
    """
    settings = ScanSettings(
        contrast="molli",
        matrix=matrix,
        n_coils=n_coils,
        acceleration=3,
        acs_fraction=n_acs / matrix,
        seed=seed,
        noise="white",
    )
    (simulated,) = simulate_scan(settings)
    lines = acs_lines(matrix, settings.acs)
    assert lines.size == n_acs
    return simulated, lines


def _nrmse(images: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Magnitude error of every phase in tissue, relative to the truth."""
    return float(np.linalg.norm(np.abs(images)[:, mask] - np.abs(truth)[:, mask]) / np.linalg.norm(truth[:, mask]))


def _coil_overlap(sens: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Median over tissue of |<S, S_true>| / (|S| |S_true|): 1 when the maps span the true coil profile."""
    inner = np.abs(np.sum(np.conj(sens) * truth, axis=0))
    norms = np.linalg.norm(sens, axis=0) * np.linalg.norm(truth, axis=0)
    return float(np.median(inner[mask] / np.maximum(norms[mask], 1e-12)))


@pytest.mark.parametrize("seed", [1, 2])
def test_few_calibration_lines_give_low_resolution_maps_close_to_the_true_coils(
    caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """5 ACS lines (64^2 at 3x, the simulator's default fraction): measured nRMSE 0.177-0.184 (true coils 0.157-0.159),
    coil overlap 0.990-0.992."""
    simulated, lines = _molli(5, seed)
    tissue = simulated.truth.labels > 0
    with caplog.at_level(logging.WARNING, logger="qmri_models.recon.cartesian"):
        sens = phase_sensitivities(simulated.kdata, lines)
    assert f"ESPIRiT needs at least {MIN_ESPIRIT_LINES} calibration lines, got 5" in caplog.text
    assert sens.shape == simulated.sens.shape
    assert _coil_overlap(sens, simulated.sens, tissue) > 0.98
    np.testing.assert_allclose(np.linalg.norm(sens, axis=0)[tissue], 1.0, atol=1e-5)
    fallback = reconstruct_phases(simulated.kdata, simulated.sampled, sens, method="cg_sense", max_iter=10)
    true_coils = reconstruct_phases(simulated.kdata, simulated.sampled, simulated.sens, method="cg_sense", max_iter=10)
    error, floor = _nrmse(fallback, simulated.images, tissue), _nrmse(true_coils, simulated.images, tissue)
    assert error < 0.21
    assert error < 1.25 * floor


def test_fallback_beats_espirit_where_espirit_has_too_few_lines() -> None:
    """At 7 lines sigpy's ESPIRiT (3x3 kernel) measured 0.22-0.26, the low-resolution maps 0.14-0.17."""
    simulated, lines = _molli(7, 1)
    tissue = simulated.truth.labels > 0
    kdata = simulated.kdata[calibration_phase(simulated.kdata, lines)]
    espirit = np.asarray(mri_app.EspiritCalib(kdata, calib_width=7, kernel_width=3, show_pbar=False).run())
    ours = espirit_sensitivities(kdata, lines)
    errors = [
        _nrmse(reconstruct_phases(simulated.kdata, simulated.sampled, s, method="cg_sense", max_iter=10), *truth)
        for s, truth in ((espirit, (simulated.images, tissue)), (ours, (simulated.images, tissue)))
    ]
    assert errors[1] < 0.8 * errors[0], errors


@pytest.mark.parametrize("n_acs", [1, 2, 3])
def test_one_coil_and_a_handful_of_lines_still_give_maps(n_acs: int) -> None:
    simulated, lines = _molli(3, 3, matrix=32, n_coils=1)
    sens = espirit_sensitivities(simulated.kdata[0], lines[:n_acs])
    tissue = simulated.truth.labels > 0
    assert np.all(np.isfinite(sens))
    assert np.mean(np.abs(sens[0][tissue]) > 0.99) > 0.95  # one coil: the map is the image's phase


def test_results_are_sigpys_own() -> None:
    """Running the App's iterations ourselves changes nothing: ESPIRiT and CG-SENSE equal sigpy's App.run()."""
    simulated, lines = _molli(10, 4)
    kdata = simulated.kdata[0]
    maps = espirit_sensitivities(kdata, lines)
    sigpy_maps = mri_app.EspiritCalib(kdata, calib_width=10, kernel_width=3, show_pbar=False).run()
    np.testing.assert_array_equal(maps, np.asarray(sigpy_maps, np.complex64))
    weights = np.broadcast_to(simulated.sampled[0][:, None], kdata.shape[-2:]).astype(np.float32)
    sigpy_image = mri_app.SenseRecon(kdata, maps, weights=weights, max_iter=20, show_pbar=False).run()
    np.testing.assert_array_equal(cg_sense(kdata, simulated.sampled[0], maps, max_iter=20), sigpy_image)


def test_cg_sense_stops_within_a_second_of_being_asked() -> None:
    simulated, lines = _molli(10, 5)
    kdata = simulated.kdata[0]
    maps = espirit_sensitivities(kdata, lines)
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    started = time.perf_counter()
    timer.start()
    try:
        with interruptible(stop), pytest.raises(Interrupted):
            cg_sense(kdata, simulated.sampled[0], maps, max_iter=100_000)
    finally:
        timer.cancel()
    assert time.perf_counter() - started < 1.3


def test_espirit_calibration_stops_when_asked() -> None:
    simulated, lines = _molli(10, 5)
    stop = threading.Event()
    stop.set()
    with interruptible(stop), pytest.raises(Interrupted):
        espirit_sensitivities(simulated.kdata[0], lines)
