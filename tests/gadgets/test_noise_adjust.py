"""NoiseAdjustGadget: the noise scan's covariance whitens every following readout, as Gadgetron's does."""

import copy
import logging
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import numpy as np
import pytest
import scipy.linalg

from gadgets.noise import NoiseAdjustConfig, NoiseAdjuster
from gadgets.runtime.registry import registered_gadgets
from tests.conftest import make_raw, raw_header_and_items

NOISE = ismrmrd.ACQ_IS_NOISE_MEASUREMENT


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64^2, 8-coil, 2x MOLLI scan with correlated coil noise and 128 noise readouts at twice the dwell."""
    return make_raw(tmp_path_factory.mktemp("noise") / "molli.h5", contrast="molli", n_coils=8, acceleration=2)


@pytest.fixture(scope="module")
def scan(raw: Path) -> tuple[Any, list[Any]]:
    return raw_header_and_items(raw)


def _adjust(header: Any, items: list[Any], **properties: str) -> list[Any]:
    adjuster = NoiseAdjuster(header, NoiseAdjustConfig.from_properties(properties))
    items = [copy.deepcopy(a) for a in items]
    sent = [a for a in items if adjuster.add(a)]
    adjuster.finish()
    return sent


def _reference_whitening(noise: np.ndarray) -> np.ndarray:
    """Inverse lower Cholesky factor of numpy's covariance of the noise readouts (independent reference)."""
    flat = np.moveaxis(noise, 1, 0).reshape(noise.shape[1], -1)
    covariance = flat @ flat.conj().T / (flat.shape[1] - 1)
    return scipy.linalg.inv(scipy.linalg.cholesky(covariance, lower=True)), covariance


def test_registered_and_first_in_every_acquisition_chain() -> None:
    spec = registered_gadgets()["NoiseAdjustGadget"]
    assert spec.consumes == (ismrmrd.Acquisition,)
    assert spec.produces == (ismrmrd.Acquisition,)
    chains = Path(__file__).parents[2] / "chains"
    for name in ("t1_molli", "t1_molli_puq", "t2prep", "t2prep_puq", "t1_ir", "cartesian_2d", "mrf_fisp"):
        text = (chains / f"{name}.xml").read_text()
        assert text.find("<classname>NoiseAdjustGadget</classname>") == text.find("<classname>"), name


def test_noise_is_dropped_and_readouts_are_whitened_in_data_units(scan: tuple[Any, list[Any]]) -> None:
    header, items = scan
    noise = np.stack([a.data for a in items if a.is_flag_set(NOISE)])
    imaging = [a for a in items if not a.is_flag_set(NOISE)]
    sent = _adjust(header, items)
    assert len(sent) == len(imaging)
    assert not any(a.is_flag_set(NOISE) for a in sent)
    inverse, covariance = _reference_whitening(noise)
    scale = np.sqrt(np.trace(covariance).real / len(covariance))
    for before, after in zip(imaging[:20], sent[:20], strict=True):
        np.testing.assert_allclose(after.data, scale * inverse @ before.data, rtol=1e-4, atol=1e-6)
        assert after.idx.kspace_encode_step_1 == before.idx.kspace_encode_step_1


def test_whitened_imaging_noise_is_white_with_the_true_covariance(raw: Path, scan: tuple[Any, list[Any]]) -> None:
    """The true covariance of the imaging readouts' noise, through the estimated whitener, is ~ a multiple of I.

    snr units use the readouts' dwell times (noise scan at twice the imaging dwell) and the header's bandwidth (1):
    Gadgetron's scale leaves variance 1 in the real and imaginary parts, i.e. complex variance 2.
    """
    header, items = scan
    with h5py.File(raw) as f:
        truth = f["truth/noise_covariance"][:]
        noise_sd = float(f["truth/noise_sd"][0])
    assert header.acquisitionSystemInformation.relativeReceiverNoiseBandwidth == 1.0
    noise = [a for a in items if a.is_flag_set(NOISE)]
    assert noise[0].sample_time_us == pytest.approx(2 * items[len(noise)].sample_time_us)
    for units, expected in (("data", 2 * noise_sd**2), ("snr", 2.0)):
        adjuster = NoiseAdjuster(header, NoiseAdjustConfig.from_properties({"units": units}))
        probe = copy.deepcopy(items[len(noise)])
        for acq in noise:
            adjuster.add(copy.deepcopy(acq))
        probe.data[:] = np.eye(8, 64, dtype=np.complex64)  # whitening is linear: read W off the identity
        adjuster.add(probe)
        whitening = probe.data[:, :8]
        np.testing.assert_allclose(whitening @ truth @ whitening.conj().T / expected, np.eye(8), atol=0.06)


def test_spiral_readouts_are_whitened_too(scan: tuple[Any, list[Any]]) -> None:
    header, items = scan
    noise = [a for a in items if a.is_flag_set(NOISE)]
    spiral = ismrmrd.Acquisition.from_array(np.ones((8, 100), np.complex64), np.zeros((100, 2), np.float32))
    spiral.sample_time_us = 2.0
    (sent,) = _adjust(header, [*noise, spiral])
    inverse, covariance = _reference_whitening(np.stack([a.data for a in noise]))
    scale = np.sqrt(np.trace(covariance).real / len(covariance))
    np.testing.assert_allclose(sent.data, scale * inverse @ np.ones((8, 100)), rtol=1e-4, atol=1e-6)
    assert sent.trajectory_dimensions == 2


def test_without_a_noise_scan_readouts_pass_unchanged_and_it_says_so(
    scan: tuple[Any, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    header, items = scan
    imaging = [a for a in items if not a.is_flag_set(NOISE)][:30]
    with caplog.at_level(logging.INFO, logger="gadgets.noise"):
        sent = _adjust(header, imaging)
    for before, after in zip(imaging, sent, strict=True):
        np.testing.assert_array_equal(after.data, before.data)
    assert caplog.text.count("no noise scan before the first readout: no prewhitening is done") == 1


def test_only_the_first_noise_readouts_count_and_late_noise_is_dropped(
    scan: tuple[Any, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    header, items = scan
    noise = [a for a in items if a.is_flag_set(NOISE)]
    imaging = [a for a in items if not a.is_flag_set(NOISE)]
    with caplog.at_level(logging.INFO, logger="gadgets.noise"):
        sent = _adjust(header, [*noise, imaging[0], noise[0], imaging[1]], max_noise_readouts="16")
    assert len(sent) == 2
    inverse, covariance = _reference_whitening(np.stack([a.data for a in noise[:16]]))
    scale = np.sqrt(np.trace(covariance).real / len(covariance))
    np.testing.assert_allclose(sent[1].data, scale * inverse @ imaging[1].data, rtol=1e-4, atol=1e-6)
    assert f"{len(noise) - 16 + 1} noise readouts were dropped unused" in caplog.text


def test_a_readout_with_other_coils_is_refused(scan: tuple[Any, list[Any]]) -> None:
    header, items = scan
    noise = [a for a in items if a.is_flag_set(NOISE)]
    odd = ismrmrd.Acquisition.from_array(np.ones((4, 64), np.complex64))
    odd.scan_counter = 999
    with pytest.raises(ValueError, match="readout 999 has 4 coils, the noise scan had 8"):
        _adjust(header, [*noise, odd])
