"""Simulator conventions, read back with ismrmrd itself, and the truth stored beside the raw data."""

from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

from qmri_models.protocols import MOLLI_TI_MS, T2PREP_TE_MS
from qmri_models.recon.cartesian import centered_fft2, centered_ifft2
from qmri_models.signal_models import MolliModel, molli_parameters_from_t1
from qmri_models.simulation.sampling import acs_lines, random_line_mask
from qmri_models.simulation.scan import ScanSettings, simulate_scan
from tests.conftest import make_raw


def read_back(path: Path) -> tuple[ismrmrd.xsd.ismrmrdHeader, list[ismrmrd.Acquisition]]:
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dataset:
        header = ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header())
        acquisitions = [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
    return header, acquisitions


def test_molli_file_follows_the_conventions(molli_raw: Path) -> None:
    header, acquisitions = read_back(molli_raw)
    assert list(header.sequenceParameters.TI) == list(MOLLI_TI_MS)
    assert header.encoding[0].encodedSpace.matrixSize.x == 64
    assert header.encoding[0].encodingLimits.set.maximum == 7
    assert header.encoding[0].encodingLimits.slice.maximum == 1
    assert header.acquisitionSystemInformation.receiverChannels == 8

    noise = [a for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    imaging = [a for a in acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert noise
    assert acquisitions[: len(noise)] == noise  # the noise scan comes first
    for acq in imaging:
        assert acq.user_int[7] == round(MOLLI_TI_MS[acq.idx.set] * 1000)  # prep time in us
        assert acq.data.shape == (8, 64)
    last_in_slice = [a for a in imaging if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)]
    assert [(a.idx.slice, a.idx.set) for a in last_in_slice] == [(0, 7), (1, 7)]
    assert last_in_slice[0] is [a for a in imaging if a.idx.slice == 0][-1]

    with h5py.File(molli_raw, "r") as f:
        sampled = f["truth/sampled"][:]
        acs = f["truth"].attrs["acs_fraction"]
    expected_acs = set(acs_lines(64, acs).tolist())
    for acq in imaging:
        flagged = acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        assert flagged == (acq.idx.kspace_encode_step_1 in expected_acs)
        assert sampled[acq.idx.slice, acq.idx.set, acq.idx.kspace_encode_step_1]
    assert len(imaging) == sampled.sum()
    assert 64 * 8 * 2 / len(imaging) == pytest.approx(4, rel=0.1)


def test_t2prep_durations_are_a_user_parameter_list(t2prep_raw: Path) -> None:
    header, acquisitions = read_back(t2prep_raw)
    durations = [p.value for p in header.userParameters.userParameterDouble if p.name == "T2PrepDuration_ms"]
    assert durations == list(T2PREP_TE_MS)
    assert not header.sequenceParameters.TI
    sets = {a.idx.set for a in acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)}
    assert sets == set(range(8))


def test_kspace_in_the_file_is_the_truth_plus_noise(t2prep_raw: Path) -> None:
    _, acquisitions = read_back(t2prep_raw)
    with h5py.File(t2prep_raw, "r") as f:
        truth = f["truth/images"][0]
        sens = f["truth/coil_sensitivities"][0]
        noise_sd = float(f["truth/noise_sd"][0])
        labels = f["truth/labels"][0]
    kdata = np.zeros((8, 4, 64, 64), dtype=np.complex64)
    for acq in acquisitions:
        if not acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            kdata[acq.idx.set, :, acq.idx.kspace_encode_step_1] = acq.data
    # a direct DFT of the noise-free coil images gives the stored k-space up to the noise
    n = 64
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n) - n // 2, np.arange(n) - n // 2) / n) / np.sqrt(n)
    expected = dft @ (truth[:, None] * sens[None]) @ dft.T
    residual = kdata - expected
    assert residual.real.std() == pytest.approx(noise_sd, rel=0.05)
    assert residual.imag.std() == pytest.approx(noise_sd, rel=0.05)
    # and the stated SNR holds: mean tissue signal of the brightest phase over the noise SD
    brightest = max(np.abs(img[labels > 0]).mean() for img in truth)
    assert brightest / noise_sd == pytest.approx(50.0, rel=1e-6)


def test_noise_free_truth_follows_the_molli_model() -> None:
    settings = ScanSettings(contrast="molli", matrix=48, n_coils=2, seed=1)
    (sim,) = simulate_scan(settings)
    tissue = sim.truth.labels > 0
    t1_ms = sim.truth.t1_ms[tissue]
    a, b, t1_star = molli_parameters_from_t1(t1_ms, sim.truth.pd[tissue], settings.inversion_efficiency)
    expected = MolliModel().signal_array(np.asarray(MOLLI_TI_MS), a=a, b=b, t1_star_ms=t1_star)
    np.testing.assert_allclose(np.abs(sim.images[:, tissue]), np.abs(expected), rtol=1e-4, atol=1e-6)
    # Look-Locker correction returns the truth exactly
    np.testing.assert_allclose(t1_star * (b / a - 1), t1_ms, rtol=1e-6)


def test_masks_keep_the_centre_and_the_acceleration() -> None:
    rng = np.random.default_rng(0)
    mask = random_line_mask(8, 160, 8, 0.06, rng)
    centre = acs_lines(160, 0.06)
    assert mask[:, centre].all()
    assert (mask.sum(axis=1) == 20).all()
    assert not (mask[0] == mask[1]).all()  # drawn independently per phase


def test_same_seed_same_file_different_seed_different(tmp_path: Path) -> None:
    a = make_raw(tmp_path / "a.h5", contrast="molli", matrix=32, seed=5)
    b = make_raw(tmp_path / "b.h5", contrast="molli", matrix=32, seed=5)
    c = make_raw(tmp_path / "c.h5", contrast="molli", matrix=32, seed=6)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert np.array_equal(fa["truth/images"][:], fb["truth/images"][:])
        assert not np.array_equal(fa["truth/images"][:], fc["truth/images"][:])


def test_sphere_phantom_option(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "spheres.h5", contrast="molli", phantom="spheres", matrix=96)
    with h5py.File(raw) as f:
        names = list(f["truth"].attrs["label_names"])
        t1 = f["truth/t1_ms"][0]
        labels = f["truth/labels"][0]
    assert names[:3] == ["background", "body", "sphere_01"]
    assert t1[labels == names.index("sphere_01")].mean() == pytest.approx(1884)


def test_random_spheres_option_draws_a_phantom_per_slice(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "random.h5", contrast="t2prep", phantom="random_spheres", matrix=64, n_slices=2)
    header, _ = read_back(raw)
    assert header.measurementInformation.protocolName.startswith("qmri_sim_t2prep_random_spheres_")
    assert header.studyInformation.bodyPartExamined == "PHANTOM"
    with h5py.File(raw) as f:
        t1 = f["truth/t1_ms"][:]
        labels = f["truth/labels"][:]
    assert labels.max() >= 2 + 5  # at least 6 spheres in the container
    assert not np.array_equal(t1[0], t1[1])
    again = make_raw(tmp_path / "again.h5", contrast="t2prep", phantom="random_spheres", matrix=64, n_slices=2)
    with h5py.File(again) as f:
        np.testing.assert_array_equal(f["truth/t1_ms"][:], t1)


def test_fft_pair_is_orthonormal_and_inverse() -> None:
    rng = np.random.default_rng(2)
    img = (rng.standard_normal((3, 16, 20)) + 1j * rng.standard_normal((3, 16, 20))).astype(np.complex64)
    k = centered_fft2(img)
    np.testing.assert_allclose(np.linalg.norm(k), np.linalg.norm(img), rtol=1e-5)
    np.testing.assert_allclose(centered_ifft2(k), img, atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("matrix", 16, "matrix must be at least 32"),
        ("acceleration", 0, "acceleration"),
        ("snr", 0, "snr"),
        ("phantom", "cube", "phantom must be one of brain, spheres, random_spheres, got 'cube'"),
    ],
)
def test_bad_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScanSettings(contrast="molli", **{field: value})  # type: ignore[arg-type]
