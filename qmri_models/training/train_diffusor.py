"""Training of the qMRI Diffusor on simulated IR slices: seeded, validated, checkpointed, resumable.

As ``train_recon``: everything a run needs to continue lives in ``OUT/checkpoint.pt`` (a different configuration
is refused, only ``steps`` may grow), the simulated examples are cached in ``OUT/examples_{train,val}.pt`` and the
result goes to ``OUT/weights.pt`` (``Diffusor.state()`` with the configuration and history). Each step draws a
batch (a permutation per epoch, a function of the step), flips it and cuts it to a ``crop`` square at random (so
the pixels keep the scans' size while a step costs less) and takes one Adam step on the noise-prediction loss; a
Diffusor trained on crops generates patch by patch at the crop's size (``diffusion.patches``). Validation: that loss
on the whole validation slices with fixed noise, and the T1 NRMSE in the object of the mean of two 10-step DDIM
generations.
"""

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qmri_models.diffusion.denoiser import ConditionalDenoiser, DenoiserConfig
from qmri_models.diffusion.sampling import denoising_loss
from qmri_models.diffusion.schedule import NoiseSchedule
from qmri_models.diffusor.model import Diffusor
from qmri_models.diffusor.scaling import MAP_NAMES, maps_to_unit_range
from qmri_models.metrics import nrmse
from qmri_models.protocols import IR_TI_MS
from qmri_models.training.checkpoints import load_or_make, refuse_other_config, save_atomic
from qmri_models.training.configs import DiffusorTrainingConfig
from qmri_models.training.diffusor_data import IrExamples, simulate_ir_examples
from qmri_models.training.recon_data import VAL_SEED_OFFSET, phantom_recipe
from qmri_models.training.train_recon import batch_indices

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
HISTORY = "history.json"
VALIDATION_SAMPLES = 2
VALIDATION_DDIM_STEPS = 10


@dataclass
class DiffusorHistory:
    """Loss and validation figures along the run."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    """Noise-prediction loss on the validation slices, fixed steps and noise."""
    val_t1_nrmse: list[float] = field(default_factory=list)
    """Mean over the validation slices of the T1 NRMSE in the object (mean of 2 generations, 10 DDIM steps)."""
    wall_s: float = 0.0


def train_diffusor(
    config: DiffusorTrainingConfig,
    out_dir: Path,
    *,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> DiffusorHistory:
    """Train (or resume training) the qMRI Diffusor; return its history.

    Parameters
    ----------
    config : What to train.
    out_dir : Where the examples, checkpoint, weights and history go.
    device : Torch device.
    on_step : Called with the step and its loss after every step (progress).

    Raises
    ------
    ValueError
        If ``out_dir`` holds a checkpoint of a different configuration.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    train_set, val_set = _examples(config, out_dir)
    torch.manual_seed(config.seed)
    schedule = noise_schedule(config)
    denoiser = ConditionalDenoiser(denoiser_config(config)).to(device)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.learning_rate)
    history = DiffusorHistory()
    step = 0
    checkpoint_path = out_dir / CHECKPOINT
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if checkpoint_path.exists():
        step, history = _resume(checkpoint_path, config, denoiser, optimizer, generator)
        log.info("resuming %s at step %d of %d", out_dir, step, config.steps)
    targets = maps_to_unit_range(train_set.maps)
    started, wall_before = time.perf_counter(), history.wall_s
    denoiser.train()
    while step < config.steps:
        indices = batch_indices(step, len(targets), config.batch_size, config.seed)
        target, condition = _cropped(
            *_flipped(targets[indices], train_set.condition[indices], step, config.seed), config.crop, step, config.seed
        )
        loss = denoising_loss(denoiser, schedule, target.to(device), condition.to(device), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
        if step % config.validate_every == 0 or step == config.steps:
            history.steps.append(step)
            history.train_loss.append(loss_value)
            history.val_loss.append(validation_loss(denoiser, schedule, val_set, device))
            diffusor = Diffusor(denoiser, schedule, IR_TI_MS, training_patch(config))
            history.val_t1_nrmse.append(validation_t1_nrmse(diffusor, val_set, device))
            history.wall_s = wall_before + time.perf_counter() - started
            _save(checkpoint_path, config, step, denoiser, optimizer, generator, history)
            denoiser.train()
            log.info(
                "step %d: loss %.3g, validation loss %.3g, T1 NRMSE %.4f",
                step,
                loss_value,
                history.val_loss[-1],
                history.val_t1_nrmse[-1],
            )
    diffusor = Diffusor(denoiser.cpu(), schedule, IR_TI_MS, training_patch(config))
    weights = {"config": dataclasses.asdict(config), "diffusor": diffusor.state()}
    torch.save({**weights, "history": dataclasses.asdict(history)}, out_dir / WEIGHTS)
    (out_dir / HISTORY).write_text(json.dumps(dataclasses.asdict(history), indent=2))
    return history


def denoiser_config(config: DiffusorTrainingConfig) -> DenoiserConfig:
    """Return the U-Net of a training configuration: 7 IR images to T1, PD and B, attention at the lowest level."""
    return DenoiserConfig(
        target_channels=len(MAP_NAMES),
        condition_channels=len(IR_TI_MS),
        channels=config.channels,
        attention_levels=(*(False,) * (len(config.channels) - 1), True),
        res_blocks=config.res_blocks,
        norm_groups=config.norm_groups,
        head_channels=config.head_channels,
    )


def noise_schedule(config: DiffusorTrainingConfig) -> NoiseSchedule:
    """Return the noise schedule of a training configuration."""
    return NoiseSchedule(train_steps=config.train_steps, prediction=config.prediction)


def training_patch(config: DiffusorTrainingConfig) -> int | None:
    """Return the side of the squares the run trains on (pixels), or None when it trains on whole slices."""
    return config.crop if config.crop < config.matrix else None


def validation_loss(
    denoiser: ConditionalDenoiser, schedule: NoiseSchedule, examples: IrExamples, device: torch.device
) -> float:
    """Return the noise-prediction loss on the examples with steps and noise drawn from a fixed seed."""
    denoiser.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        loss = denoising_loss(
            denoiser,
            schedule,
            maps_to_unit_range(examples.maps).to(device),
            examples.condition.to(device),
            generator,
        )
    return float(loss)


def validation_t1_nrmse(diffusor: Diffusor, examples: IrExamples, device: torch.device) -> float:
    """Return the mean over the examples of the T1 NRMSE in the object of the mean of 2 short DDIM generations."""
    scores = []
    for i in range(len(examples.maps)):
        maps = diffusor.generate_maps(
            examples.condition[i].numpy(),
            n_samples=VALIDATION_SAMPLES,
            steps=VALIDATION_DDIM_STEPS,
            seed=i,
            device=device,
        )
        mask = examples.mask[i].numpy()
        scores.append(nrmse(maps.value("T1"), examples.maps[i, 0].numpy(), mask))
    return float(np.mean(scores))


def _flipped(target: torch.Tensor, condition: torch.Tensor, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the batch flipped along y, x, both or neither (drawn from the step: a resumed run flips alike)."""
    flips = torch.randint(0, 2, (2,), generator=torch.Generator().manual_seed(seed * 104729 + step)).tolist()
    dims = [d for d, flip in zip((-2, -1), flips, strict=True) if flip]
    return (target.flip(dims), condition.flip(dims)) if dims else (target, condition)


def _cropped(
    target: torch.Tensor, condition: torch.Tensor, side: int, step: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the batch cut to a ``side`` x ``side`` square at a place drawn from the step (whole when it fits)."""
    y, x = target.shape[-2:]
    if side >= min(y, x):
        return target, condition
    generator = torch.Generator().manual_seed(seed * 15485863 + step)
    top, left = (int(torch.randint(0, n - side + 1, (1,), generator=generator)) for n in (y, x))
    window = (..., slice(top, top + side), slice(left, left + side))
    return target[window], condition[window]


def _examples(config: DiffusorTrainingConfig, out_dir: Path) -> tuple[IrExamples, IrExamples]:
    """Return the training and validation examples, from the caches in ``out_dir`` or simulated (and cached)."""
    sets = []
    for name, n, seed_offset in (("train", config.n_train, 0), ("val", config.n_val, VAL_SEED_OFFSET)):

        def make(n: int = n, seed_offset: int = seed_offset) -> dict[str, Any]:
            log.info("simulating %d %s IR slices for %s", n, "training" if seed_offset == 0 else "validation", out_dir)
            examples = simulate_ir_examples(
                n,
                matrix=config.matrix,
                snr_range=config.snr_range,
                phantom_fraction=config.phantom_fraction,
                efficiency_range=config.efficiency_range,
                seed=config.seed + seed_offset,
            )
            return dataclasses.asdict(examples)

        recipe = {**config.data_recipe(), **phantom_recipe(config.phantom_fraction), "split": name}
        sets.append(IrExamples(**load_or_make(out_dir / f"examples_{name}.pt", recipe, make)))
    return sets[0], sets[1]


def _save(
    path: Path,
    config: DiffusorTrainingConfig,
    step: int,
    denoiser: ConditionalDenoiser,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: DiffusorHistory,
) -> None:
    """Write the checkpoint atomically (the noise generator's state too, so a resumed run continues exactly)."""
    state = {
        "config": dataclasses.asdict(config),
        "step": step,
        "state_dict": denoiser.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "history": dataclasses.asdict(history),
    }
    save_atomic(state, path)


def _resume(
    path: Path,
    config: DiffusorTrainingConfig,
    denoiser: ConditionalDenoiser,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, DiffusorHistory]:
    """Load a checkpoint into the network, optimizer and noise generator; return its step and history."""
    state = torch.load(path, weights_only=False)
    refuse_other_config(path, state["config"], dataclasses.asdict(config), growable="steps")
    denoiser.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["step"]), DiffusorHistory(**state["history"])
