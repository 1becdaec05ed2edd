"""Multi-phase Cartesian scans with known truth: anatomy, contrast, coils, undersampling and noise."""

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from qmri_models.protocols import PROTOCOLS, ProtocolName, protocol_spec
from qmri_models.recon.cartesian import centered_fft2
from qmri_models.signal_models import signal_model
from qmri_models.simulation.anatomy import brain_slice, sphere_phantom
from qmri_models.simulation.coils import coil_sensitivities
from qmri_models.simulation.sampling import DEFAULT_ACS_FRACTION, random_line_mask
from qmri_models.simulation.tissues import ParameterMaps

Contrast = ProtocolName
CONTRASTS: tuple[str, ...] = tuple(PROTOCOLS)
"""Simulated contrasts: the mapping protocols (``qmri_models.protocols``)."""
Phantom = Literal["brain", "spheres"]


@dataclass(frozen=True)
class ScanSettings:
    """What to simulate. Times in ms; ``snr`` is the mean tissue signal of the brightest phase over the noise SD."""

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
    n_noise_readouts: int = 4

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if self.phantom not in ("brain", "spheres"):
            raise ValueError(f"phantom must be brain or spheres, got {self.phantom!r}")
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
    """Noise-only readouts. Shape `(readouts, coils, kx)` complex64."""
    noise_sd: float


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
    truth = brain_slice(n, rng, fov_mm=settings.fov_mm) if settings.phantom == "brain" else sphere_phantom(n)
    images = (contrast_images(settings, truth) * np.exp(1j * smooth_phase(n, rng))).astype(np.complex64)
    sens = coil_sensitivities(settings.n_coils, n, rng)
    sampled = random_line_mask(len(settings.prep_times), n, settings.acceleration, settings.acs, rng)
    tissue = truth.labels > 0
    reference = max(float(np.abs(img[tissue]).mean()) for img in images)
    noise_sd = reference / settings.snr
    kdata = centered_fft2(images[:, None] * sens[None])
    kdata += _complex_noise(rng, kdata.shape, noise_sd)
    kdata *= sampled[:, None, :, None]
    noise = _complex_noise(rng, (settings.n_noise_readouts, settings.n_coils, n), noise_sd)
    return SimulatedSlice(
        truth=truth,
        images=images,
        sens=sens,
        sampled=sampled,
        kdata=kdata.astype(np.complex64),
        noise=noise.astype(np.complex64),
        noise_sd=noise_sd,
    )


def _complex_noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
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
