"""Spiral FISP MR fingerprinting scans with known truth: anatomy, EPG fingerprints, coils, spiral NUFFT and noise.

The object is the Cartesian simulator's (``scan.py``): a brain-like slice from ``anatomy.brain_slice`` with its
tissue maps, a smooth background phase and coil sensitivities from ``coils.py``. The noise-free image of frame ``t``
is ``pd * exp(i phase_rad) * fisp_fingerprints(t1_ms, t2_ms, schedule)[..., t]`` (EPG signal with M0 = 1, zero
outside the tissue); frame ``t`` reads one spiral interleaf (``spiral.py``) with every coil through the NUFFT of
``qmri_models.recon.nufft`` (unitary-scaled, sigpy's convention), and complex Gaussian noise is added to every
sample. The image series itself is never held whole: frames sharing a spiral rotation are imaged and sampled
together, so memory stays at a few frames of coil images.

The acquisition is the full schedule (``n_frames_full`` frames, ``jiang_schedule``) truncated to its first
``n_frames_full // truncation`` frames, as in the paper's five-fold shortened scans.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from qmri_models.mrf.epg import fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule, jiang_schedule
from qmri_models.recon.nufft import NufftOp
from qmri_models.simulation.anatomy import MIN_MATRIX, brain_slice
from qmri_models.simulation.coils import coil_sensitivities, mix_coils
from qmri_models.simulation.scan import (
    NOISE_DWELL_RATIO,
    NOISE_MODELS,
    NoiseModel,
    noise_covariance,
    slice_generators,
    smooth_phase,
)
from qmri_models.simulation.spiral import ORDERINGS, FrameRotations, Ordering, SpiralDesign, frame_rotations, rotate
from qmri_models.simulation.tissues import ParameterMaps


@dataclass(frozen=True)
class MrfScanSettings:
    """What to simulate; every default is the benchmark's (256 matrix, 8 coils, 200 of 1000 frames, 48 interleaves).

    ``snr`` is the mean tissue magnitude of the brightest noise-free frame over the noise SD of the real (and of the
    imaginary) part of every k-space sample. The NUFFT is unitary-scaled, so this is the image SNR that frame would
    have if it were fully sampled on the Cartesian grid: the same definition as ``ScanSettings.snr``, noise SD the
    root-mean-square over the coils, sensitivities normalised in the noise's metric, with ``noise="correlated"``.

    Attributes
    ----------
    matrix : Image size in pixels per side (encoded and reconstructed), at least 32.
    n_coils : Receive coils.
    n_frames_full : Frames of the full FISP schedule.
    truncation : The scan acquires the first ``n_frames_full // truncation`` frames of the schedule.
    n_interleaves : Spiral interleaves of the fixed set (48 as in Jiang 2015: 7.5 degrees apart).
    ordering : ``fixed``: frame ``t`` plays interleaf ``t mod n_interleaves``; ``golden``: golden-angle rotations.
    snr : Mean tissue signal of the brightest frame over the noise SD (see above).
    seed : Seed of everything random: anatomy, phase, coils and noise.
    n_slices : Slices, each its own brain slice.
    fov_mm : Field of view per side in mm.
    slice_thickness_mm : Slice thickness in mm (geometry in the raw file only).
    schedule_seed : Seed of the schedule's TR noise (``jiang_schedule``).
    spiral_alpha : Variable-density exponent of the spiral (``SpiralDesign.alpha``).
    n_noise_readouts : Noise-only readouts written before the scan, read with ``NOISE_DWELL_RATIO`` times the dwell.
    noise : ``correlated`` coil noise (``ScanSettings.noise``) or ``white``.
    """

    matrix: int = 256
    n_coils: int = 8
    n_frames_full: int = 1000
    truncation: int = 5
    n_interleaves: int = 48
    ordering: Ordering = "fixed"
    snr: float = 50.0
    seed: int = 0
    n_slices: int = 1
    fov_mm: float = 220.0
    slice_thickness_mm: float = 5.0
    schedule_seed: int = 0
    spiral_alpha: float = 1.5
    n_noise_readouts: int = 32
    noise: NoiseModel = "correlated"

    def __post_init__(self) -> None:
        if self.matrix < MIN_MATRIX:
            raise ValueError(f"matrix must be at least {MIN_MATRIX}, got {self.matrix}")
        if self.n_coils < 1 or self.n_slices < 1:
            raise ValueError(f"need at least one coil and one slice, got {self.n_coils} and {self.n_slices}")
        if self.truncation < 1:
            raise ValueError(f"truncation must be at least 1, got {self.truncation}")
        if self.n_frames_full < self.truncation:
            raise ValueError(
                f"n_frames_full ({self.n_frames_full}) must be at least truncation ({self.truncation}) "
                "so that a frame is acquired"
            )
        if self.ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}, got {self.ordering!r}")
        if not np.isfinite(self.snr) or self.snr <= 0:
            raise ValueError(f"snr must be positive and finite, got {self.snr}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {self.noise!r}")
        if self.n_noise_readouts < 0:
            raise ValueError(f"n_noise_readouts must be at least 0, got {self.n_noise_readouts}")
        if self.slice_thickness_mm <= 0:
            raise ValueError(f"slice_thickness_mm must be positive, got {self.slice_thickness_mm}")
        _ = self.spiral  # the design validates n_interleaves, fov_mm and spiral_alpha

    @property
    def n_frames(self) -> int:
        """Frames acquired: ``n_frames_full // truncation``."""
        return self.n_frames_full // self.truncation

    @property
    def spiral(self) -> SpiralDesign:
        """The spiral interleaf design (gradient limits at their defaults)."""
        return SpiralDesign(
            matrix=self.matrix, n_interleaves=self.n_interleaves, fov_mm=self.fov_mm, alpha=self.spiral_alpha
        )

    @property
    def full_schedule(self) -> FispSchedule:
        """The full FISP schedule, ``n_frames_full`` frames."""
        return jiang_schedule(self.n_frames_full, seed=self.schedule_seed)

    @property
    def schedule(self) -> FispSchedule:
        """The schedule acquired: the first ``n_frames`` frames of ``full_schedule``."""
        return self.full_schedule.truncated(self.n_frames)


@dataclass(frozen=True)
class SimulatedMrfSlice:
    """One simulated MRF slice with everything needed to check or score a reconstruction."""

    truth: ParameterMaps
    phase_rad: np.ndarray = field(repr=False)
    """Smooth background phase of the object in radians. Shape `(y, x)` float32."""
    sens: np.ndarray = field(repr=False)
    """Coil sensitivities, unit sum of squares. Shape `(coils, y, x)` complex64."""
    rotations: FrameRotations = field(repr=False)
    """Interleaf label and exact spiral rotation of every frame."""
    coord: np.ndarray = field(repr=False)
    """Every frame's k-space positions ``(ky, kx)`` in cycles per FOV. Shape `(frames, samples, 2)` float32."""
    readouts: np.ndarray = field(repr=False)
    """Noisy k-space samples of every frame. Shape `(frames, coils, samples)` complex64."""
    noise: np.ndarray = field(repr=False)
    """Noise-only readouts, read with ``NOISE_DWELL_RATIO`` times the dwell. Shape `(readouts, coils, samples)`
    complex64."""
    noise_sd: float
    """Root-mean-square over the coils of the SD of the real (and of the imaginary) part of every sample's noise."""
    noise_covariance: np.ndarray = field(repr=False)
    """Coil covariance ``E[n_i conj(n_j)]`` of the readouts' noise. Shape `(coils, coils)` complex128."""


def tissue_signal(truth: ParameterMaps, phase_rad: np.ndarray, schedule: FispSchedule) -> np.ndarray:
    """Return the noise-free signal of every tissue pixel and frame: ``pd * exp(i phase) * fingerprint``.

    Parameters
    ----------
    truth : Tissue maps; pixels with label 0 (background) carry no signal.
    phase_rad : Background phase in radians. Shape `(y, x)`.
    schedule : The acquired schedule.

    Returns
    -------
    Signal of the pixels ``truth.labels > 0`` in C order. Shape `(tissue_pixels, frames)` complex64.
    """
    tissue = truth.labels > 0
    fingerprints = fisp_fingerprints(
        torch.from_numpy(np.ascontiguousarray(truth.t1_ms[tissue], dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(truth.t2_ms[tissue], dtype=np.float32)),
        schedule,
    ).numpy()
    weight = truth.pd[tissue] * np.exp(1j * phase_rad[tissue])
    return (fingerprints * weight[:, None]).astype(np.complex64)


def simulate_mrf_slice(settings: MrfScanSettings, rng: np.random.Generator) -> SimulatedMrfSlice:
    """Return one simulated slice of the MRF scan described by ``settings``.

    Parameters
    ----------
    settings : Scan settings.
    rng : Random generator (the slice's anatomy, phase, coils and noise all come from it).

    Returns
    -------
    The slice's truth, phase, coils, trajectory, noisy readouts and noise readouts.
    """
    n = settings.matrix
    truth = brain_slice(n, rng, fov_mm=settings.fov_mm)
    phase = smooth_phase(n, rng).astype(np.float32)
    covariance = noise_covariance(settings)
    sens = coil_sensitivities(settings.n_coils, n, rng, None if settings.noise == "white" else covariance)
    signal = tissue_signal(truth, phase, settings.schedule)
    noise_sd = float(np.abs(signal).mean(axis=0).max()) / settings.snr
    rotations = frame_rotations(settings.n_frames, settings.n_interleaves, settings.ordering)
    coord = rotate(settings.spiral.interleaf().astype(np.float32), rotations.angle_rad)
    readouts = _sample_frames(signal, truth.labels > 0, sens, coord, rotations.angle_rad)
    factor = None if settings.noise == "white" else np.linalg.cholesky(covariance)
    readouts += mix_coils(_complex_noise(rng, readouts.shape, noise_sd), factor)
    noise_shape = (settings.n_noise_readouts, settings.n_coils, coord.shape[1])
    noise = mix_coils(_complex_noise(rng, noise_shape, noise_sd / np.sqrt(NOISE_DWELL_RATIO)), factor)
    return SimulatedMrfSlice(
        truth=truth,
        phase_rad=phase,
        sens=sens,
        rotations=rotations,
        coord=coord,
        readouts=readouts,
        noise=noise,
        noise_sd=noise_sd,
        noise_covariance=2 * noise_sd**2 * covariance,
    )


def _sample_frames(
    signal: np.ndarray, tissue: np.ndarray, sens: np.ndarray, coord: np.ndarray, angle_rad: np.ndarray
) -> np.ndarray:
    """Return the noise-free coil k-space of every frame on its own spiral.

    Frames with the same rotation share one NUFFT operator and one batched transform.

    Parameters
    ----------
    signal : Signal of every tissue pixel and frame. Shape `(tissue_pixels, frames)` complex64.
    tissue : Where the tissue pixels are. Shape `(y, x)` bool.
    sens : Coil sensitivities. Shape `(coils, y, x)` complex64.
    coord : Every frame's k-space positions ``(ky, kx)`` in cycles per FOV. Shape `(frames, samples, 2)`.
    angle_rad : Every frame's spiral rotation; equal angles mean equal ``coord``. Shape `(frames,)`.

    Returns
    -------
    k-space samples. Shape `(frames, coils, samples)` complex64.
    """
    n_frames, n_samples = coord.shape[:2]
    readouts = np.empty((n_frames, len(sens), n_samples), dtype=np.complex64)
    sens_t = torch.from_numpy(sens)
    for angle in np.unique(angle_rad):
        frames = np.flatnonzero(angle_rad == angle)
        img = np.zeros((len(frames), *tissue.shape), dtype=np.complex64)
        img[:, tissue] = signal[:, frames].T
        op = NufftOp(coord[frames[0]], tissue.shape)
        readouts[frames] = op.forward(torch.from_numpy(img)[:, None] * sens_t).numpy()
    return readouts


def _complex_noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
    """Return circular complex Gaussian noise whose real and imaginary parts each have SD ``sd``, complex64."""
    real = rng.standard_normal((*shape, 2), dtype=np.float32) * np.float32(sd)
    return real.view(np.complex64)[..., 0]


def simulate_mrf_scan(settings: MrfScanSettings) -> list[SimulatedMrfSlice]:
    """Return every slice of the MRF scan, each drawn from its own seeded generator.

    Parameters
    ----------
    settings : Scan settings; ``seed`` fixes everything.

    Returns
    -------
    One simulated slice per slice index.
    """
    return [simulate_mrf_slice(settings, rng) for rng in slice_generators(settings.seed, settings.n_slices)]
