"""Spiral MRF simulator: trajectory, readouts against a direct DFT, noise, and the raw file read back with ismrmrd."""

import subprocess
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import torch

from gadgets.cli import main
from gadgets.evaluate import read_truth
from qmri_models.mrf.epg import fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule, jiang_schedule, schedule_from_header
from qmri_models.simulation.mrf_raw_writer import write_mrf_raw
from qmri_models.simulation.mrf_scan import MrfScanSettings, SimulatedMrfSlice, simulate_mrf_scan, simulate_mrf_slice
from qmri_models.simulation.scan import NOISE_DWELL_RATIO
from qmri_models.simulation.spiral import (
    GOLDEN_ANGLE_RAD,
    SpiralDesign,
    coord_from_ismrmrd_traj,
    frame_rotations,
    ismrmrd_traj,
    rotate,
    spiral_trajectory,
)
from tests.conftest import ensure_debian_tool

SMALL = {"matrix": 48, "n_coils": 3, "n_frames_full": 30, "truncation": 5, "n_interleaves": 8}


def radius(coord: np.ndarray) -> np.ndarray:
    return np.hypot(coord[..., 0], coord[..., 1])


@pytest.mark.parametrize(("matrix", "n_interleaves"), [(48, 8), (64, 16), (256, 48)])
def test_spiral_starts_at_the_centre_and_reaches_the_edge_of_the_grid(matrix: int, n_interleaves: int) -> None:
    coord = spiral_trajectory(SpiralDesign(matrix=matrix, n_interleaves=n_interleaves))
    assert coord.shape[0] == n_interleaves
    r = radius(coord)
    assert np.all(r <= matrix / 2 + 1e-9)
    assert r[:, -1].min() == pytest.approx(matrix / 2)
    assert np.all(r[:, 0] == 0)
    assert np.all(np.diff(r, axis=1) > 0)  # outwards all the way


def test_default_spiral_is_the_benchmarks_size() -> None:
    design = SpiralDesign()
    coord = spiral_trajectory(design)
    assert coord.size // 2 == pytest.approx(100_000, rel=0.05)  # 48 interleaves of about 2100 samples
    # the dwell puts the peak gradient at 40 mT/m: k in 1/m, gamma-bar in Hz/T
    k_per_m = coord[0] / (design.fov_mm / 1000)
    gradient_mt_per_m = 1e3 * radius(np.diff(k_per_m, axis=0)) / (42.577478e6 * design.dwell_us() * 1e-6)
    assert gradient_mt_per_m.max() == pytest.approx(40.0, rel=1e-6)
    assert 3.0 < design.dwell_us() * coord.shape[1] / 1000 < 8.0  # readout of a few ms, as in FISP-MRF


def test_spiral_density_falls_from_the_centre_to_the_edge() -> None:
    design = SpiralDesign(matrix=128, n_interleaves=24)
    coord = spiral_trajectory(design)
    r = radius(coord[0])[1:]
    step = radius(np.diff(coord[0], axis=0))
    # samples creep near the centre and stride at the edge
    assert step[r > 0.4 * 128].mean() > 2 * step[r < 0.1 * 128].mean()
    # samples per unit k-space area of the whole set: densest at the centre
    edges = np.linspace(0, 64, 9)
    counts, _ = np.histogram(radius(coord), bins=edges)
    density = counts / np.diff(np.pi * edges**2)
    assert np.all(np.diff(density) < 0)
    # more so than the uniform (alpha = 1) spiral of the same set
    uniform = radius(spiral_trajectory(SpiralDesign(matrix=128, n_interleaves=24, alpha=1.0)))
    uniform_density = np.histogram(uniform, bins=edges)[0] / np.diff(np.pi * edges**2)
    assert density[0] / density[-1] > 1.5 * uniform_density[0] / uniform_density[-1]


def test_rotation_turns_kx_towards_ky() -> None:
    base = np.array([[0.0, 1.0], [0.0, 2.0]])  # along +kx
    quarter = rotate(base, np.array([np.pi / 2]))
    np.testing.assert_allclose(quarter[0], [[1.0, 0.0], [2.0, 0.0]], atol=1e-12)  # now along +ky
    design = SpiralDesign(matrix=64, n_interleaves=6)
    fixed = spiral_trajectory(design)
    np.testing.assert_allclose(rotate(fixed[0], np.array(2 * np.pi / 6)), fixed[1], atol=1e-12)


def test_fixed_ordering_plays_the_interleaves_in_turn() -> None:
    rotations = frame_rotations(10, 4, "fixed")
    assert rotations.interleaf.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    np.testing.assert_allclose(rotations.angle_rad, rotations.interleaf * np.pi / 2)


def test_golden_ordering_rotates_each_frame_by_the_golden_angle() -> None:
    rotations = frame_rotations(200, 48, "golden")
    assert np.rad2deg(GOLDEN_ANGLE_RAD) == pytest.approx(137.50776, abs=1e-4)
    steps = np.mod(np.diff(rotations.angle_rad), 2 * np.pi)
    np.testing.assert_allclose(steps, GOLDEN_ANGLE_RAD, atol=1e-9)
    assert len(np.unique(rotations.angle_rad)) == 200  # every frame its own spiral
    # the label is the nearest interleaf of the fixed set
    labelled = rotations.interleaf * 2 * np.pi / 48
    gap = np.angle(np.exp(1j * (rotations.angle_rad - labelled)))
    assert np.all(np.abs(gap) <= np.pi / 48 + 1e-12)
    assert np.all((rotations.interleaf >= 0) & (rotations.interleaf < 48))


def test_traj_layout_is_kx_ky_over_the_matrix() -> None:
    coord = spiral_trajectory(SpiralDesign(matrix=64, n_interleaves=8))
    traj = ismrmrd_traj(coord, 64)
    assert traj.dtype == np.float32
    np.testing.assert_allclose(traj[..., 0], coord[..., 1] / 64, atol=1e-7)  # kx first
    np.testing.assert_allclose(traj[..., 1], coord[..., 0] / 64, atol=1e-7)
    assert np.abs(traj).max() <= 0.5
    np.testing.assert_allclose(coord_from_ismrmrd_traj(traj, 64), coord, atol=1e-5)


def frame_images(sim: SimulatedMrfSlice, schedule: FispSchedule) -> np.ndarray:
    """Noise-free coil-combined image of every frame, straight from the truth maps (float64 EPG)."""
    tissue = sim.truth.labels > 0
    fingerprints = fisp_fingerprints(
        torch.from_numpy(sim.truth.t1_ms[tissue].astype(np.float64)),
        torch.from_numpy(sim.truth.t2_ms[tissue].astype(np.float64)),
        schedule,
    ).numpy()
    images = np.zeros((schedule.n_frames, *tissue.shape), dtype=np.complex128)
    images[:, tissue] = (fingerprints * (sim.truth.pd[tissue] * np.exp(1j * sim.phase_rad[tissue]))[:, None]).T
    return images


def direct_dft(coil_images: np.ndarray, coord: np.ndarray) -> np.ndarray:
    """Unitary non-uniform DFT, origin at pixel n // 2: `(coils, y, x)` at `(samples, 2)` -> `(coils, samples)`."""
    ny, nx = coil_images.shape[-2:]
    ey = np.exp(-2j * np.pi * np.outer(coord[:, 0], np.arange(ny) - ny // 2) / ny)
    ex = np.exp(-2j * np.pi * np.outer(coord[:, 1], np.arange(nx) - nx // 2) / nx)
    return np.einsum("jp,cpq,jq->cj", ey, coil_images, ex) / np.sqrt(ny * nx)


@pytest.mark.parametrize("ordering", ["fixed", "golden"])
def test_every_readout_is_the_dft_of_its_frame_on_its_spiral(ordering: str) -> None:
    settings = MrfScanSettings(**SMALL, ordering=ordering, snr=1e9, seed=4)  # type: ignore[arg-type]
    sim = simulate_mrf_slice(settings, np.random.default_rng(4))
    assert sim.readouts.shape == (6, 3, sim.coord.shape[1])
    assert sim.readouts.dtype == np.complex64
    expected_coord = rotate(settings.spiral.interleaf(), frame_rotations(6, 8, ordering).angle_rad)  # type: ignore[arg-type]
    np.testing.assert_allclose(sim.coord, expected_coord, atol=1e-4)
    images = frame_images(sim, settings.schedule)
    for t in range(settings.n_frames):
        expected = direct_dft(sim.sens * images[t], sim.coord[t].astype(np.float64))
        error = np.linalg.norm(sim.readouts[t] - expected) / np.linalg.norm(expected)
        assert error < 1e-3, f"frame {t}: relative error {error:.2e}"


def test_noise_has_the_stated_snr() -> None:
    settings = MrfScanSettings(**{**SMALL, "n_frames_full": 100}, snr=20.0, seed=2, n_noise_readouts=8)  # type: ignore[arg-type]
    sim = simulate_mrf_slice(settings, np.random.default_rng(2))
    images = frame_images(sim, settings.schedule)
    tissue = sim.truth.labels > 0
    brightest = np.abs(images[:, tissue]).mean(axis=1).max()
    assert brightest / sim.noise_sd == pytest.approx(20.0, rel=1e-4)
    residual = np.stack(
        [sim.readouts[t] - direct_dft(sim.sens * images[t], sim.coord[t].astype(np.float64)) for t in range(20)]
    )
    # noise SD is the coils' root-mean-square; the noise scan, at NOISE_DWELL_RATIO times the dwell, is quieter
    for part, sd in [(residual.real, sim.noise_sd), (residual.imag, sim.noise_sd)] + [
        (noise, sim.noise_sd / np.sqrt(NOISE_DWELL_RATIO)) for noise in (sim.noise.real, sim.noise.imag)
    ]:
        assert part.std() == pytest.approx(sd, rel=0.05)
        assert abs(part.mean()) < 0.1 * sd
    assert sim.noise.shape == (8, 3, sim.coord.shape[1])


def test_same_seed_same_readouts() -> None:
    settings = MrfScanSettings(**SMALL, seed=9)  # type: ignore[arg-type]
    a, b = simulate_mrf_scan(settings)[0], simulate_mrf_scan(settings)[0]
    np.testing.assert_array_equal(a.readouts, b.readouts)
    c = simulate_mrf_scan(MrfScanSettings(**SMALL, seed=10))[0]  # type: ignore[arg-type]
    assert not np.array_equal(a.truth.t1_ms, c.truth.t1_ms)


@pytest.fixture(scope="module")
def golden_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MrfScanSettings, list[SimulatedMrfSlice]]:
    settings = MrfScanSettings(**SMALL, ordering="golden", n_slices=2, seed=1)  # type: ignore[arg-type]
    slices = simulate_mrf_scan(settings)
    path = tmp_path_factory.mktemp("mrf") / "mrf_golden.h5"
    write_mrf_raw(path, settings, slices)
    return path, settings, slices


def read_back(path: Path) -> tuple[ismrmrd.xsd.ismrmrdHeader, list[ismrmrd.Acquisition]]:
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dataset:
        header = ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header())
        acquisitions = [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
    return header, acquisitions


def test_header_records_the_encoding_and_the_schedule_exactly(golden_raw: tuple) -> None:
    path, settings, _ = golden_raw
    header, _ = read_back(path)
    encoding = header.encoding[0]
    assert encoding.trajectory == ismrmrd.xsd.trajectoryType.SPIRAL
    assert encoding.encodedSpace.matrixSize.x == encoding.reconSpace.matrixSize.y == 48
    assert encoding.encodedSpace.fieldOfView_mm.x == pytest.approx(220.0)
    assert encoding.encodingLimits.repetition.maximum == 5
    assert encoding.encodingLimits.kspace_encoding_step_1.maximum == 7
    assert encoding.encodingLimits.slice.maximum == 1
    assert header.acquisitionSystemInformation.receiverChannels == 3

    acquired = schedule_from_header(header)
    assert acquired == settings.schedule == jiang_schedule(30, seed=0).truncated(6)
    assert acquired.key() == settings.schedule.key()
    assert schedule_from_header(header, full=True) == jiang_schedule(30, seed=0)
    assert list(header.sequenceParameters.TR) == list(acquired.tr_ms)
    assert list(header.sequenceParameters.flipAngle_deg) == list(acquired.flip_angles_deg)
    assert list(header.sequenceParameters.TE) == [acquired.te_ms]
    longs = {p.name: p.value for p in header.userParameters.userParameterLong}
    assert longs == {"mrf_n_frames": 6, "mrf_n_frames_full": 30, "mrf_truncation": 5, "mrf_n_interleaves": 8}
    strings = {p.name: p.value for p in header.userParameters.userParameterString}
    assert strings["mrf_ordering"] == "golden"


def test_readouts_carry_the_exact_trajectory_and_frame_indices(golden_raw: tuple) -> None:
    path, settings, slices = golden_raw
    _, acquisitions = read_back(path)
    noise = [a for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    imaging = [a for a in acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert acquisitions[: len(noise)] == noise
    assert len(noise) == settings.n_noise_readouts
    assert all(a.traj.size == 0 for a in noise)
    assert len(imaging) == 2 * 6  # one readout per frame and slice
    rotations = frame_rotations(6, 8, "golden")
    for i, acq in enumerate(imaging):
        s, t = divmod(i, 6)
        assert (acq.idx.slice, acq.idx.repetition) == (s, t)
        assert acq.idx.kspace_encode_step_1 == rotations.interleaf[t]
        assert acq.trajectory_dimensions == 2
        assert acq.center_sample == 0
        assert np.abs(acq.traj).max() <= 0.5
        np.testing.assert_array_equal(acq.traj, ismrmrd_traj(slices[s].coord[t], 48))
        np.testing.assert_allclose(coord_from_ismrmrd_traj(acq.traj, 48), slices[s].coord[t], atol=1e-5)
        np.testing.assert_array_equal(acq.data, slices[s].readouts[t])
        assert acq.is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE) == (t == 0)
        assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) == (t == 5)
        assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_REPETITION)
        assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) == (i == len(imaging) - 1)
    # the traj is the truth: the frame's own golden-angle rotation, not its interleaf label's
    frame = imaging[1]
    label = rotate(settings.spiral.interleaf(), np.array(frame.idx.kspace_encode_step_1 * 2 * np.pi / 8))
    assert not np.allclose(coord_from_ismrmrd_traj(frame.traj, 48), label, atol=1e-2)


def test_truth_sits_where_evaluate_reads_it(golden_raw: tuple) -> None:
    path, settings, slices = golden_raw
    (labels, t1, t2), names = read_truth(path, "labels", "t1_ms", "t2_ms")
    assert labels.shape == t1.shape == t2.shape == (2, 48, 48)
    assert names[:2] == ["background", "white_matter"]
    np.testing.assert_array_equal(t1[1], slices[1].truth.t1_ms)
    with h5py.File(path, "r") as f:
        truth = f["truth"]
        np.testing.assert_array_equal(truth["phase_rad"][0], slices[0].phase_rad)
        np.testing.assert_array_equal(truth["coil_sensitivities"][1], slices[1].sens)
        assert FispSchedule.from_json(truth.attrs["schedule_json"]) == settings.schedule
        assert truth.attrs["ordering"] == "golden"


def test_ismrmrd_c_library_reads_the_file(golden_raw: tuple, tmp_path: Path) -> None:
    path, _, _ = golden_raw
    read = ensure_debian_tool("ismrmrd_read_timing_test", "ismrmrd-tools")
    result = subprocess.run([read, str(path)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    # libismrmrd 1.8's XML parser takes the header (it refuses schema versions other than its own, so drop it)
    parse = ensure_debian_tool("ismrmrd_test_xml", "ismrmrd-tools")
    with h5py.File(path, "r") as f:
        xml = f["dataset/xml"][0].decode()
    (tmp_path / "header.xml").write_text("\n".join(line for line in xml.splitlines() if "<version>" not in line))
    result = subprocess.run(  # it writes raw.xml and processed.xml to its working folder
        [parse, str(tmp_path / "header.xml")], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_cli_writes_an_mrf_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mrf.h5"
    args = ["simulate", "mrf", "--out", str(out), "--matrix", "48", "--coils", "2", "--frames", "20"]
    assert main([*args, "--interleaves", "6", "--ordering", "golden", "--seed", "3"]) == 0
    assert "4 of 20 frames" in capsys.readouterr().out
    header, acquisitions = read_back(out)
    assert schedule_from_header(header) == jiang_schedule(20, seed=0).truncated(4)
    imaging = [a for a in acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert [a.idx.repetition for a in imaging] == [0, 1, 2, 3]
    assert imaging[0].data.shape[0] == 2


def test_cli_refuses_cartesian_options_for_mrf(tmp_path: Path) -> None:
    out = tmp_path / "mrf.h5"
    assert main(["simulate", "mrf", "--out", str(out), "--matrix", "48", "--phantom", "spheres"]) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("truncation", 0, "truncation must be at least 1"),
        ("n_frames_full", 3, "n_frames_full"),
        ("ordering", "spiral", "ordering must be one of fixed, golden"),
        ("n_interleaves", 0, "n_interleaves"),
        ("n_interleaves", 129, "n_interleaves must lie in 1..128"),
        ("matrix", 16, "matrix must be at least 32"),
        ("snr", 0.0, "snr"),
    ],
)
def test_bad_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MrfScanSettings(**{field: value})  # type: ignore[arg-type]
