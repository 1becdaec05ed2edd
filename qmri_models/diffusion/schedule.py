"""The noise schedule of a diffusion model and the two samplers' MONAI schedulers built from it."""

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from qmri_models.diffusion.prediction import PREDICTIONS, Prediction

Sampler = Literal["ddpm", "ddim"]
"""``ddpm``: the ancestral sampler of Ho et al. 2020 over every training step (what the qMRI Diffusor paper used);
``ddim``: Song et al. 2021's deterministic sampler (eta 0) over a few evenly spaced steps."""

SAMPLERS: tuple[str, ...] = get_args(Sampler)


@dataclass(frozen=True)
class NoiseSchedule:
    """A DDPM noise schedule: betas rising linearly (Ho et al.'s) over ``train_steps`` steps.

    The forward process is ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``abar_t`` the cumulative product
    of ``1 - beta`` up to step t (``alphas_cumprod``).
    """

    train_steps: int = 1000
    """Diffusion steps T of training (and of the DDPM sampler)."""
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction: Prediction = "epsilon"
    """What the denoiser predicts (training target and samplers alike)."""

    def __post_init__(self) -> None:
        if self.train_steps < 2:
            raise ValueError(f"train_steps must be at least 2, got {self.train_steps}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")

    def ddpm(self) -> DDPMScheduler:
        """Return the training and ancestral-sampling scheduler (posterior variance ``fixed_small``, x0 clipped)."""
        return DDPMScheduler(
            num_train_timesteps=self.train_steps,
            schedule="linear_beta",
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type=self.prediction,
        )

    def ddim(self, steps: int) -> DDIMScheduler:
        """Return the few-step DDIM scheduler over ``steps`` evenly spaced steps, ``steps`` dividing ``train_steps``.

        The steps are "trailing" (Lin et al. 2024): ``T-1, T-1-k, ..., k-1`` with ``k = train_steps // steps``, so
        sampling starts from pure noise and each step lands where the next one starts. MONAI 1.6's own
        ``set_timesteps`` spaces them by ``linspace(T-1, 0)`` while its ``step`` moves by ``T // steps``: for 10
        steps of 1000 the chain then skips from 999 to 899 but the next call evaluates 888, and the samples keep
        noise (the same mismatch as diffusers issue 12633).

        MONAI's own clipping of the predicted x_0 is off: it clips x_0 but keeps the unclipped noise estimate for
        the step's direction, so the two disagree wherever the network leaves [-1, 1]; the samplers clip by
        ``clip_prediction`` before the step instead.
        """
        self.check_ddim_steps(steps)
        scheduler = DDIMScheduler(
            num_train_timesteps=self.train_steps,
            schedule="linear_beta",
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            clip_sample=False,
            prediction_type=self.prediction,
        )
        scheduler.set_timesteps(steps)
        stride = self.train_steps // steps
        scheduler.timesteps = torch.arange(self.train_steps - 1, -1, -stride)
        return scheduler

    def clip_prediction(self, output: torch.Tensor, sample: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """Return the network's output changed so that the x_0 it implies lies in [-1, 1], its noise consistent.

        The x_0 implied by ``output`` (as ``prediction`` says) is clipped, and the output recomputed from the clipped
        x_0 and ``sample`` (what diffusers calls ``use_clipped_model_output``), so a step's x_0 and its direction
        towards ``sample`` agree. MONAI's DDIM clips x_0 alone, and wherever a network overshoots the range (a
        background at -1) the two disagree and the sample drifts, further with more steps: with a denoiser that puts
        its data at -1.2, 1000 DDIM steps ended at +0.77 and DDPM (whose step keeps them consistent) at -1.00; clipped
        here, DDIM ends at -1.00 at any step count (``test_samplers_keep_an_overshooting_denoiser_at_the_edge``). On
        the shipped Diffusor it took 50-step DDIM's sphere means from 4 to 8 points below DDPM's to within 1.2 points
        of them (README, qMRI Diffusor).

        Parameters
        ----------
        output : The network's output at one step. Shape `(batch, channels, y, x)`.
        sample : The noisy sample it was given, same shape.
        abar : ``abar_t`` of the step (a 0-d tensor on the output's device).
        """
        root, rest = abar.sqrt(), (1 - abar).sqrt()
        if self.prediction == "sample":
            return output.clamp(-1.0, 1.0)
        if self.prediction == "epsilon":
            clean = ((sample - rest * output) / root).clamp(-1.0, 1.0)
            return (sample - root * clean) / rest
        clean = (root * sample - rest * output).clamp(-1.0, 1.0)
        return (root * sample - clean) / rest

    def check_ddim_steps(self, steps: int) -> None:
        """Raise ValueError unless ``steps`` DDIM steps fit this schedule (1 to ``train_steps``, dividing it)."""
        if not 1 <= steps <= self.train_steps or self.train_steps % steps:
            raise ValueError(f"steps must divide train_steps ({self.train_steps}), got {steps}")

    def sampler_steps(self, sampler: Sampler, steps: int) -> int:
        """Return how many denoising steps ``sampler`` takes: all training steps for DDPM, ``steps`` for DDIM."""
        return self.train_steps if sampler == "ddpm" else steps

    def alphas_cumprod(self) -> torch.Tensor:
        """Return ``abar_t`` for t = 0 .. T - 1. Shape `(train_steps,)` float32."""
        return self.ddpm().alphas_cumprod.float()
