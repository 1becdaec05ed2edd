"""Generation: N samples of a target from pure noise given one condition, by the DDPM or the DDIM sampler."""

from collections.abc import Callable

import torch

from qmri_models.diffusion.denoiser import ConditionalDenoiser
from qmri_models.diffusion.patches import PatchGrid, predict
from qmri_models.diffusion.schedule import SAMPLERS, NoiseSchedule, Sampler


def generate(
    denoiser: ConditionalDenoiser,
    condition: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    n_samples: int,
    sampler: Sampler = "ddim",
    steps: int = 50,
    seed: int = 0,
    batch_size: int | None = None,
    patches: PatchGrid | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Return ``n_samples`` targets generated from independent noise, all conditioned on ``condition``.

    The samples run as one batch (or batches of ``batch_size``) on the condition's device; the denoiser must be
    there. The same seed, device and inputs give the same samples. Every step's prediction is clipped to the
    targets' range [-1, 1] with its noise estimate (``NoiseSchedule.clip_prediction``).

    Parameters
    ----------
    denoiser : The trained network (put in eval mode here).
    condition : One condition image. Shape `(condition_channels, y, x)`, scaled as in training.
    schedule : The noise schedule the denoiser was trained with.
    n_samples : Samples N, at least 1.
    sampler : ``ddpm`` (ancestral, every one of the schedule's ``train_steps``; ``steps`` is ignored) or ``ddim``
        (``steps`` evenly spaced steps, deterministic given the starting noise).
    steps : DDIM steps, 1 to ``schedule.train_steps``.
    seed : Seed of the starting noise (and of the DDPM sampler's noise).
    batch_size : Most samples per network call (None: all N at once).
    patches : Denoise each step patch by patch, overlaps averaged (``patches.predict``); None: whole images.
    on_step : Called with (steps done, steps in all) after every denoising step of every batch.

    Returns
    -------
    Samples. Shape `(n_samples, target_channels, y, x)` float32, on the condition's device.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if condition.ndim != 3:
        raise ValueError(f"condition must be one image (channels, y, x), got shape {tuple(condition.shape)}")
    batch = n_samples if batch_size is None else batch_size
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    scheduler = schedule.ddim(steps) if sampler == "ddim" else schedule.ddpm()
    if sampler == "ddpm":
        scheduler.set_timesteps(schedule.train_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    device = condition.device
    abar = schedule.alphas_cumprod().to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (denoiser.config.target_channels, *condition.shape[1:])
    denoiser = denoiser.eval()
    out = []
    total = len(timesteps) * -(-n_samples // batch)
    done = 0
    with torch.inference_mode():
        for begin in range(0, n_samples, batch):
            count = min(batch, n_samples - begin)
            cond = condition.unsqueeze(0).expand(count, *condition.shape)
            sample = torch.randn((count, *shape), generator=generator, device=device)
            for t in timesteps:
                output = schedule.clip_prediction(predict(denoiser, sample, cond, t, patches), sample, abar[t])
                sample, _ = scheduler.step(output, t, sample, generator=generator)
                done += 1
                if on_step is not None:
                    on_step(done, total)
            out.append(sample)
    return torch.cat(out).float()


def denoising_loss(
    denoiser: ConditionalDenoiser,
    schedule: NoiseSchedule,
    target: torch.Tensor,
    condition: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return the training loss: the MSE between the denoiser's output and what it predicts.

    Each example gets a step t drawn uniformly from the schedule and noise ``eps``; the denoiser sees
    ``x_t = sqrt(abar_t) target + sqrt(1 - abar_t) eps`` and the condition, and is held to ``eps`` (Ho et al.'s
    noise-prediction loss), to ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) target`` or to ``target``, as
    ``schedule.prediction`` says.

    Parameters
    ----------
    denoiser : The network being trained.
    schedule : The noise schedule.
    target : Clean targets scaled into [-1, 1]. Shape `(batch, target_channels, y, x)`.
    condition : Shape `(batch, condition_channels, y, x)`.
    generator : Source of the steps and noise, on the targets' device.

    Returns
    -------
    Scalar loss.
    """
    steps = torch.randint(0, schedule.train_steps, (target.shape[0],), generator=generator, device=target.device)
    noise = torch.randn(target.shape, generator=generator, device=target.device)
    scheduler = schedule.ddpm()
    noisy = scheduler.add_noise(target, noise, steps)
    wanted = {
        "epsilon": lambda: noise,
        "v_prediction": lambda: scheduler.get_velocity(target, noise, steps),
        "sample": lambda: target,
    }[schedule.prediction]()
    return torch.nn.functional.mse_loss(denoiser(noisy, condition, steps), wanted)
