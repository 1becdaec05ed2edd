"""The qMRI Diffusor: a trained conditional denoiser with its schedule and inversion times, and map generation."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from qmri_models.diffusion.denoiser import ConditionalDenoiser
from qmri_models.diffusion.patches import PatchGrid
from qmri_models.diffusion.sampling import generate
from qmri_models.diffusion.schedule import NoiseSchedule, Sampler
from qmri_models.diffusor.scaling import MAP_NAMES, image_level, maps_from_unit_range


@dataclass(frozen=True)
class DiffusorMaps:
    """The maps of one slice: the mean over the samples, their SD, and the samples."""

    mean: np.ndarray
    """T1 (ms), PD (the images' units) and B. Shape `(3, y, x)` float32."""
    sd: np.ndarray
    """SD over the samples, same units. Shape `(3, y, x)` float32 (0 with one sample)."""
    samples: np.ndarray
    """Every sample's maps. Shape `(n_samples, 3, y, x)` float32."""

    def value(self, name: str) -> np.ndarray:
        """Return the mean map ``name`` (``T1``, ``PD`` or ``B``). Shape `(y, x)`."""
        return self.mean[MAP_NAMES.index(name)]

    def spread(self, name: str) -> np.ndarray:
        """Return the SD map of ``name``. Shape `(y, x)`."""
        return self.sd[MAP_NAMES.index(name)]


DDIM_STEPS = 10
"""DDIM steps by default. On the shipped weights 10 steps map as well as 50 in a third to a fifth of the time: on
whole slices at SNR 30, white and grey matter T1 NRMSE 0.027 and 0.061 against 0.025 and 0.062, the 400-2000 ms
spheres within a point of each other, 49 s against 163 s per 160^2 slice of 10 samples on this 2-core CPU (``qmri
evaluate-diffusor --snr 100 30 --sphere-slices 2 --brain-slices 2 --steps 10``, and ``--steps 50``); against the full
DDPM sampler on crops, T1 NRMSE 1% below it in the object and 15% above it in the tissue below 2000 ms (50 steps: 5%
and 18% above), 36 s against 200 s (``bench/bench_diffusor.py --weights t1_ir --ddim-steps 10 50
--ddpm-timed-steps 10 --quality-crop 64 --quality-slices 2``)."""


class Diffusor:
    """Generate T1, PD and B from the IR magnitude images of a slice, as the qMRI Diffusor paper."""

    def __init__(
        self, denoiser: ConditionalDenoiser, schedule: NoiseSchedule, ti_ms: tuple[float, ...], patch: int | None
    ) -> None:
        """Bundle a trained denoiser with its schedule, the inversion times of its images and its training patch.

        ``patch`` is the side (pixels) of the squares the denoiser was trained on; None if it saw whole slices.
        """
        if denoiser.config.condition_channels != len(ti_ms) or denoiser.config.target_channels != len(MAP_NAMES):
            raise ValueError(
                f"the denoiser takes {denoiser.config.condition_channels} images to {denoiser.config.target_channels}"
                f" maps; the Diffusor needs {len(ti_ms)} to {len(MAP_NAMES)}"
            )
        if patch is not None and patch % denoiser.config.downsampling:
            raise ValueError(f"a {patch} px patch is no multiple of the U-Net's {denoiser.config.downsampling}")
        self.denoiser, self.schedule, self.ti_ms = denoiser, schedule, tuple(float(t) for t in ti_ms)
        self.patch = patch

    def generate_maps(
        self,
        magnitude: np.ndarray,
        *,
        n_samples: int = 10,
        sampler: Sampler = "ddim",
        steps: int = DDIM_STEPS,
        seed: int = 0,
        stride: int = 0,
        device: str | torch.device = "cpu",
        on_step: Callable[[int, int], None] | None = None,
    ) -> DiffusorMaps:
        """Return the maps of one slice: mean and SD over ``n_samples`` generations.

        Parameters
        ----------
        magnitude : IR magnitude images at ``ti_ms``. Shape `(tis, y, x)`; any size (padded for the U-Net).
        n_samples : Generations N (one batch).
        sampler : ``ddpm`` or ``ddim`` (``qmri_models.diffusion.sampling.generate``).
        steps : DDIM steps.
        seed : Seed of the generations.
        stride : Pixels between patches, for a Diffusor trained on patches (at most the patch; 0: half the patch, so
            every pixel is seen by up to four patches; ignored for a Diffusor trained on whole slices).
        device : Where the network runs.
        on_step : Progress, as ``generate``'s.

        Raises
        ------
        ValueError
            If the images are not one per inversion time the network was trained for, or the stride does not fit
            the patch.
        """
        if magnitude.ndim != 3 or magnitude.shape[0] != len(self.ti_ms):
            raise ValueError(
                f"the Diffusor takes {len(self.ti_ms)} images (TI {', '.join(f'{t:g}' for t in self.ti_ms)} ms), "
                f"got shape {magnitude.shape}"
            )
        grid = self.patch_grid(stride)
        level = image_level(magnitude)
        condition = torch.from_numpy(np.abs(magnitude) / level).float().to(device)
        y, x = condition.shape[1:]
        step = self.denoiser.config.downsampling
        padded = functional.pad(condition, (0, -x % step, 0, -y % step))
        scaled = generate(
            self.denoiser.to(device),
            padded,
            self.schedule,
            n_samples=n_samples,
            sampler=sampler,
            steps=steps,
            seed=seed,
            patches=grid,
            on_step=on_step,
        )[..., :y, :x]
        maps = maps_from_unit_range(scaled).cpu().numpy()
        maps[:, MAP_NAMES.index("PD")] *= level
        return DiffusorMaps(
            mean=maps.mean(axis=0).astype(np.float32),
            sd=(maps.std(axis=0, ddof=1) if n_samples > 1 else np.zeros_like(maps[0])).astype(np.float32),
            samples=maps.astype(np.float32),
        )

    def patch_grid(self, stride: int = 0) -> PatchGrid | None:
        """Return the patches the Diffusor generates by, ``stride`` px apart (0: half the patch); None: whole slices.

        Raises
        ------
        ValueError
            If the stride is larger than the patch.
        """
        if self.patch is None:
            return None
        return PatchGrid(self.patch, stride or max(1, self.patch // 2))

    def state(self) -> dict[str, Any]:
        """Return what ``from_state`` rebuilds the Diffusor from."""
        return {
            "denoiser": self.denoiser.state(),
            "schedule": dataclasses.asdict(self.schedule),
            "ti_ms": list(self.ti_ms),
            "patch": self.patch,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Diffusor":
        """Return the Diffusor ``state()`` saved (network on the CPU, in eval mode)."""
        return cls(
            ConditionalDenoiser.from_state(state["denoiser"]),
            NoiseSchedule(**state["schedule"]),
            tuple(state["ti_ms"]),
            state["patch"],
        )
