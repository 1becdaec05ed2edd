"""Multi-phase Cartesian scans with known truth: anatomy, contrast, coils, undersampling and noise."""

from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

import numpy as np
from scipy.ndimage import gaussian_filter

from qmri_models.protocols import PROTOCOLS, ProtocolName, protocol_spec
from qmri_models.recon.cartesian import centered_fft2
from qmri_models.signal_models import signal_model
from qmri_models.simulation.anatomy import brain_slice, random_sphere_phantom, sphere_phantom
from qmri_models.simulation.coils import coil_noise_covariance, coil_sensitivities, mix_coils
from qmri_models.simulation.sampling import DEFAULT_ACS_FRACTION, random_line_mask
from qmri_models.simulation.tissues import ParameterMaps

Contrast = ProtocolName
CONTRASTS: tuple[str, ...] = tuple(PROTOCOLS)
"""Simulated contrasts: the mapping protocols (``qmri_models.protocols``)."""
Phantom = Literal["brain", "spheres", "random_spheres"]
"""What a slice shows: a random brain slice (``anatomy.brain_slice``), the fixed NIST-like sphere phantom
(``anatomy.sphere_phantom``) or a sphere phantom with random values (``anatomy.random_sphere_phantom``)."""
PHANTOMS: tuple[str, ...] = get_args(Phantom)
NoiseModel = Literal["correlated", "white"]
NOISE_MODELS: tuple[str, ...] = ("correlated", "white")
"""Receiver noise: ``correlated`` between coils with unequal coil levels (``coils.coil_noise_covariance``), as real
arrays have, or ``white`` (independent, equal in every coil)."""
NOISE_DWELL_RATIO = 2.0
"""Dwell time of the noise scan over that of the imaging readouts: the noise scan is read at half the bandwidth,
so its noise power is half the imaging readouts' (the ratio the prewhitening's scale handles)."""
_NOISE_STREAM = 0x4E4F495345
"""Second entropy word of the scan's noise covariance generator (``noise_covariance``), apart from the slices'."""


class NoiseSettings(Protocol):
    """What the noise covariance depends on (``ScanSettings`` and the MRF scan's settings both have it)."""

    @property
    def noise(self) -> NoiseModel:
        """The noise model."""

    @property
    def n_coils(self) -> int:
        """Receive coils."""

    @property
    def seed(self) -> int:
        """Seed of the scan."""


@dataclass(frozen=True)
class ScanSettings:
    """What to simulate. Times in ms; ``snr`` is the mean tissue signal of the brightest phase over the noise SD.

    The noise SD is the root-mean-square over the coils of each coil's noise SD (of the real and of the imaginary
    part of a k-space sample); with ``noise="correlated"`` the coils' levels differ around it and neighbours
    correlate. The sensitivities are normalised in the noise's metric (``coils.coil_sensitivities``), so a fully
    sampled, SNR-optimally combined (prewhitened) image has noise of that SD and ``snr`` is its SNR, as with white
    noise. The noise scan (``n_noise_readouts``) has the same coil covariance at ``NOISE_DWELL_RATIO`` times the
    dwell, hence that much less power.
    """

    contrast: Contrast
    matrix: int = 160
    n_coils: int = 8
    acceleration: int = 1
    acs_fraction: float | None = None
    snr: float = 50.0
    seed: int = 0
    n_slices: int = 1
    phantom: Phantom = "brain"
    prep_times_ms: tuple[float, ...] | None = None
    inversion_efficiency: float = 0.96
    fov_mm: float = 220.0
    slice_thickness_mm: float = 8.0
    n_noise_readouts: int = 128
    noise: NoiseModel = "correlated"

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {self.noise!r}")
        if self.n_noise_readouts < 0:
            raise ValueError(f"n_noise_readouts must be at least 0, got {self.n_noise_readouts}")
        if self.phantom not in PHANTOMS:
            raise ValueError(f"phantom must be one of {', '.join(PHANTOMS)}, got {self.phantom!r}")
        if self.matrix < 32:
            raise ValueError(f"matrix must be at least 32, got {self.matrix}")
        if self.acceleration < 1:
            raise ValueError(f"acceleration must be at least 1, got {self.acceleration}")
        if self.snr <= 0:
            raise ValueError(f"snr must be positive, got {self.snr}")
        if self.n_slices < 1 or self.n_coils < 1:
            raise ValueError(f"need at least one slice and one coil, got {self.n_slices} and {self.n_coils}")

    @property
    def prep_times(self) -> tuple[float, ...]:
        """Preparation time of every phase in ms: ``prep_times_ms``, else the protocol's default times."""
        if self.prep_times_ms is not None:
            return tuple(float(t) for t in self.prep_times_ms)
        return protocol_spec(self.contrast).prep_times_ms

    @property
    def acs(self) -> float:
        """Fully sampled centre fraction: the explicit one, else the PUQ paper's for this acceleration."""
        if self.acs_fraction is not None:
            return self.acs_fraction
        return DEFAULT_ACS_FRACTION.get(self.acceleration, 0.08)


@dataclass(frozen=True)
class SimulatedSlice:
    """One simulated slice with everything needed to score a reconstruction."""

    truth: ParameterMaps
    images: np.ndarray = field(repr=False)
    """Noise-free coil-combined images. Shape `(phases, y, x)` complex64."""
    sens: np.ndarray = field(repr=False)
    """Coil sensitivities, unit sum of squares. Shape `(coils, y, x)` complex64."""
    sampled: np.ndarray = field(repr=False)
    """Acquired lines per phase. Shape `(phases, ky)` bool."""
    kdata: np.ndarray = field(repr=False)
    """Noisy k-space, zero where not sampled. Shape `(phases, coils, ky, kx)` complex64."""
    noise: np.ndarray = field(repr=False)
    """Noise-only readouts, read with ``NOISE_DWELL_RATIO`` times the dwell. Shape `(readouts, coils, kx)` complex64."""
    noise_sd: float
    """Root-mean-square over the coils of the SD of the real (and of the imaginary) part of the k-space noise."""
    noise_covariance: np.ndarray = field(repr=False)
    """Coil covariance ``E[n_i conj(n_j)]`` of the k-space noise. Shape `(coils, coils)` complex128."""


def contrast_images(settings: ScanSettings, truth: ParameterMaps) -> np.ndarray:
    """Return the real-valued signal of every phase for the slice's tissue (signed for the signed models).

    The same forward model the protocol's fit uses (``qmri_models.signal_models``), with the parameters its
    ``tissue_parameters`` gives the tissue.

    Parameters
    ----------
    settings : Scan settings (contrast, preparation times, inversion efficiency).
    truth : Tissue parameter maps.

    Returns
    -------
    Signal. Shape `(phases, y, x)` float64.
    """
    model = signal_model(protocol_spec(settings.contrast).model)
    t1 = np.where(truth.t1_ms > 0, truth.t1_ms, 1.0)
    t2 = np.where(truth.t2_ms > 0, truth.t2_ms, np.inf)
    parameters = model.tissue_parameters(t1, t2, truth.pd, inversion_efficiency=settings.inversion_efficiency)
    return model.signal_array(np.asarray(settings.prep_times), **parameters)


def smooth_phase(matrix: int, rng: np.random.Generator) -> np.ndarray:
    """Return a smooth background phase of up to about one radian. Shape `(y, x)` float."""
    phase = gaussian_filter(rng.standard_normal((matrix, matrix)), sigma=matrix / 5)
    return phase / max(np.abs(phase).max(), 1e-12) + rng.uniform(-np.pi, np.pi)


def simulate_slice(settings: ScanSettings, rng: np.random.Generator) -> SimulatedSlice:
    """Return one simulated slice of the scan described by ``settings``.

    Parameters
    ----------
    settings : Scan settings.
    rng : Random generator (the slice's anatomy, coils, mask and noise all come from it).

    Returns
    -------
    The slice's truth, noise-free images, coils, mask, noisy k-space and noise readouts.
    """
    n = settings.matrix
    truth = slice_truth(settings, rng)
    images = (contrast_images(settings, truth) * np.exp(1j * smooth_phase(n, rng))).astype(np.complex64)
    covariance = noise_covariance(settings)
    sens = coil_sensitivities(settings.n_coils, n, rng, None if settings.noise == "white" else covariance)
    sampled = random_line_mask(len(settings.prep_times), n, settings.acceleration, settings.acs, rng)
    noise_sd = noise_sd_for_snr(images, truth.labels > 0, settings.snr)
    factor = None if settings.noise == "white" else np.linalg.cholesky(covariance)
    kdata = centered_fft2(images[:, None] * sens[None])
    kdata += mix_coils(complex_noise(rng, kdata.shape, noise_sd), factor, axis=1)
    kdata *= sampled[:, None, :, None]
    noise_shape = (settings.n_noise_readouts, settings.n_coils, n)
    noise = mix_coils(complex_noise(rng, noise_shape, noise_sd / np.sqrt(NOISE_DWELL_RATIO)), factor)
    return SimulatedSlice(
        truth=truth,
        images=images,
        sens=sens,
        sampled=sampled,
        kdata=kdata.astype(np.complex64),
        noise=noise.astype(np.complex64),
        noise_sd=noise_sd,
        noise_covariance=2 * noise_sd**2 * covariance,
    )


def noise_sd_for_snr(images: np.ndarray, tissue: np.ndarray, snr: float) -> float:
    """Return the noise SD (of the real and of the imaginary part) that gives the images an SNR of ``snr``.

    The signal is the mean magnitude over the tissue of the brightest phase.

    Parameters
    ----------
    images : Noise-free images. Shape `(phases, y, x)`.
    tissue : Object pixels. Shape `(y, x)` bool.
    snr : Signal over noise SD, positive.
    """
    return max(float(np.abs(img[tissue]).mean()) for img in images) / snr


def slice_truth(settings: ScanSettings, rng: np.random.Generator) -> ParameterMaps:
    """Return the ground truth of one slice of ``settings.phantom`` (the fixed sphere phantom draws nothing)."""
    if settings.phantom == "brain":
        return brain_slice(settings.matrix, rng, fov_mm=settings.fov_mm)
    if settings.phantom == "random_spheres":
        return random_sphere_phantom(settings.matrix, rng)
    return sphere_phantom(settings.matrix)


def noise_covariance(settings: NoiseSettings) -> np.ndarray:
    """Return the scan's coil noise covariance with unit mean diagonal: one coil array, one noise scan, all slices.

    Parameters
    ----------
    settings : Scan settings (``noise``, ``n_coils`` and ``seed`` are read).

    Returns
    -------
    ``coils.coil_noise_covariance`` drawn from the scan's seed, or the identity for white noise.
    Shape `(coils, coils)` complex128.
    """
    if settings.noise == "white":
        return np.eye(settings.n_coils, dtype=np.complex128)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, _NOISE_STREAM]))
    return coil_noise_covariance(settings.n_coils, rng)


def complex_noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
    """Return circular complex Gaussian noise whose real and imaginary parts each have SD ``sd``."""
    return sd * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


def simulate_scan(settings: ScanSettings) -> list[SimulatedSlice]:
    """Return every slice of the scan, each drawn from its own seeded generator.

    Parameters
    ----------
    settings : Scan settings; ``seed`` fixes everything.

    Returns
    -------
    One simulated slice per slice index.
    """
    return [simulate_slice(settings, rng) for rng in slice_generators(settings.seed, settings.n_slices)]


def slice_generators(seed: int, n_slices: int) -> list[np.random.Generator]:
    """Return one independent random generator per slice, all spawned from ``seed`` (the same seed, the same scan)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_slices)]
