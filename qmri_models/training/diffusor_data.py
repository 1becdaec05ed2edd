"""Training data of the qMRI Diffusor: simulated inversion-recovery slices in image space, with their true maps.

Each slice is a random brain slice or (for ``phantom_fraction`` of them) a random sphere phantom, its seven IR
images by the protocol's forward model (``|PD (1 - B exp(-TI / T1))|``) with a smooth background phase and
complex Gaussian noise at an SNR drawn for the slice, as a fully sampled, SNR-optimally combined reconstruction
would give them (the paper trained on images, not k-space). The inversion efficiency is drawn per slice.
"""

from dataclasses import dataclass

import numpy as np
import torch

from qmri_models.diffusor.scaling import image_level
from qmri_models.protocols import IR_TI_MS
from qmri_models.simulation.scan import (
    ScanSettings,
    complex_noise,
    contrast_images,
    noise_sd_for_snr,
    slice_generators,
    slice_truth,
    smooth_phase,
)
from qmri_models.training.recon_data import phantom_slices


@dataclass(frozen=True)
class IrExamples:
    """Simulated IR slices: the network's condition and the true maps."""

    condition: torch.Tensor
    """IR magnitude images over their image level (``scaling.image_level``). Shape `(n, tis, y, x)` float32."""
    maps: torch.Tensor
    """True T1 (ms), PD (in units of the image level) and B; 0 outside the object. Shape `(n, 3, y, x)` float32."""
    mask: torch.Tensor
    """Object pixels. Shape `(n, y, x)` bool."""


def simulate_ir_examples(
    n_examples: int,
    *,
    matrix: int,
    snr_range: tuple[float, float],
    phantom_fraction: float,
    efficiency_range: tuple[float, float],
    seed: int,
    ti_ms: tuple[float, ...] = IR_TI_MS,
) -> IrExamples:
    """Return ``n_examples`` simulated IR slices (the same arguments, the same slices).

    Parameters
    ----------
    n_examples : Slices.
    matrix : Image size in pixels per side.
    snr_range : The SNR of each slice is drawn log-uniformly from it.
    phantom_fraction : Fraction of the slices that are random sphere phantoms (``recon_data.phantom_slices``).
    efficiency_range : The inversion efficiency of each slice is drawn uniformly from it.
    seed : Seed of the slices.
    ti_ms : Inversion times in ms.
    """
    phantoms = phantom_slices(n_examples, phantom_fraction, seed)
    condition, maps, mask = [], [], []
    for rng, phantom in zip(slice_generators(seed, n_examples), phantoms, strict=True):
        efficiency = float(rng.uniform(*efficiency_range))
        settings = ScanSettings(
            contrast="ir",
            matrix=matrix,
            prep_times_ms=ti_ms,
            inversion_efficiency=efficiency,
            phantom="random_spheres" if phantom else "brain",
        )
        truth = slice_truth(settings, rng)
        images = contrast_images(settings, truth) * np.exp(1j * smooth_phase(matrix, rng))
        tissue = truth.labels > 0
        snr = float(np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]))))
        magnitude = np.abs(images + complex_noise(rng, images.shape, noise_sd_for_snr(images, tissue, snr)))
        level = image_level(magnitude)
        condition.append(magnitude / level)
        b = np.where(tissue, 1.0 + efficiency, 0.0)
        maps.append(np.stack([np.where(tissue, truth.t1_ms, 0.0), truth.pd / level, b]))
        mask.append(tissue)
    return IrExamples(
        condition=torch.from_numpy(np.stack(condition)).float(),
        maps=torch.from_numpy(np.stack(maps)).float(),
        mask=torch.from_numpy(np.stack(mask)),
    )
