"""Training of the PUQ reconstruction network on simulated slices: seeded, validated, checkpointed, resumable.

Everything a run needs to continue lives in ``OUT/checkpoint.pt``: the configuration, the step, the weights, the
optimizer, the random state of dropout and the validation history (the batch order is a function of the step).
Running again with the same configuration resumes from there (a different configuration is refused, naming the
fields that differ; only ``steps`` may grow); the simulated examples are cached in ``OUT/examples_{train,val}.pt``.
The trained weights go to ``OUT/weights.pt`` with the configuration and the validation history.
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
from torch.nn import functional

from qmri_models.metrics import nrmse
from qmri_models.networks.unrolled import UnrolledRecon, sens_reduce
from qmri_models.training.checkpoints import load_or_make, refuse_other_config, save_atomic
from qmri_models.training.configs import ReconTrainingConfig
from qmri_models.training.recon_data import VAL_SEED_OFFSET, ReconExamples, phantom_recipe, simulate_recon_examples

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
HISTORY = "history.json"


@dataclass
class TrainingHistory:
    """Loss and validation figures along the run."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_nrmse: list[float] = field(default_factory=list)
    """Mean NRMSE of the validation images in the tissue mask, dropout off."""
    val_zero_filled_nrmse: float | None = None
    """The same for the zero-filled images: the floor any training must beat."""
    wall_s: float = 0.0


def validation_nrmse(network: UnrolledRecon, examples: ReconExamples, device: torch.device) -> float:
    """Return the mean NRMSE of the network's images (dropout off) in the tissue mask over the examples."""
    network.eval()
    scores = []
    with torch.inference_mode():
        for i in range(len(examples)):
            out = network(*(t[i : i + 1].to(device) for t in (examples.kdata, examples.sampled, examples.sens)))
            scores.append(_tissue_nrmse(out[0].cpu(), examples.target[i], examples.tissue[i]))
    network.train()
    return float(sum(scores) / len(scores))


def zero_filled_nrmse(examples: ReconExamples) -> float:
    """Return the mean NRMSE of the zero-filled (coil-combined) images in the tissue mask."""
    images = sens_reduce(examples.kdata, examples.sens)
    scores = [_tissue_nrmse(images[i], examples.target[i], examples.tissue[i]) for i in range(len(examples))]
    return float(sum(scores) / len(scores))


def _tissue_nrmse(estimate: torch.Tensor, target: torch.Tensor, tissue: torch.Tensor) -> float:
    """Return ``qmri_models.metrics.nrmse`` over the tissue pixels of every phase (`(phases, y, x)` images)."""
    return nrmse(estimate.numpy(), target.numpy(), np.broadcast_to(tissue.numpy(), target.shape))


def train_recon(
    config: ReconTrainingConfig,
    out_dir: Path,
    *,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingHistory:
    """Train (or resume training) the reconstruction network; return its history.

    Parameters
    ----------
    config : What to train.
    out_dir : Where the examples, checkpoint, weights and history go.
    device : Torch device.
    on_step : Called with the step and its loss after every step (progress).

    Returns
    -------
    Loss and validation history, also written to ``out_dir/history.json``.

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
    network = UnrolledRecon(
        n_phases=train_set.kdata.shape[1],
        n_iterations=config.n_iterations,
        hidden=config.hidden,
        dropout=config.dropout,
    ).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    history = TrainingHistory(val_zero_filled_nrmse=zero_filled_nrmse(val_set))
    step = 0
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        step, history = _resume(checkpoint_path, config, network, optimizer)
        log.info("resuming %s at step %d of %d", out_dir, step, config.steps)
    network.train()
    started = time.perf_counter()
    wall_before = history.wall_s
    while step < config.steps:
        indices = batch_indices(step, len(train_set), config.batch_size, config.seed)
        kdata, sampled, sens, target = (
            t[indices].to(device) for t in (train_set.kdata, train_set.sampled, train_set.sens, train_set.target)
        )
        loss = functional.mse_loss(torch.view_as_real(network(kdata, sampled, sens)), torch.view_as_real(target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
        if step % config.validate_every == 0 or step == config.steps:
            history.steps.append(step)
            history.train_loss.append(loss_value)
            history.val_nrmse.append(validation_nrmse(network, val_set, device))
            history.wall_s = wall_before + time.perf_counter() - started
            _save(checkpoint_path, config, step, network, optimizer, history)
            log.info("step %d: loss %.3g, validation NRMSE %.4f", step, loss_value, history.val_nrmse[-1])
    weights = {"config": dataclasses.asdict(config), "state_dict": network.state_dict()}
    torch.save({**weights, "history": dataclasses.asdict(history)}, out_dir / WEIGHTS)
    (out_dir / HISTORY).write_text(json.dumps(dataclasses.asdict(history), indent=2))
    return history


def batch_indices(step: int, n_examples: int, batch_size: int, seed: int) -> torch.Tensor:
    """Return the examples of a training step: each epoch a fresh permutation, a function of the step alone.

    Parameters
    ----------
    step : Step, from 0.
    n_examples : Training examples.
    batch_size : Examples per step (all of them when there are fewer).
    seed : Run seed.

    Returns
    -------
    Indices. Shape `(min(batch_size, n_examples),)` int64.
    """
    per_epoch = max(1, n_examples // batch_size)
    epoch, k = divmod(step, per_epoch)
    permutation = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return permutation[k * batch_size : (k + 1) * batch_size]


def _examples(config: ReconTrainingConfig, out_dir: Path) -> tuple[ReconExamples, ReconExamples]:
    """Return the training and validation examples, simulated once and cached in ``out_dir``."""
    sets = []
    for name, n, seed_offset in (("train", config.n_train, 0), ("val", config.n_val, VAL_SEED_OFFSET)):

        def make(name: str = name, n: int = n, seed_offset: int = seed_offset) -> dict[str, Any]:
            log.info("simulating %d %s examples for %s", n, name, out_dir)
            examples = simulate_recon_examples(
                config.map_name,
                n,
                matrix=config.matrix,
                n_coils=config.n_coils,
                accelerations=config.accelerations,
                snr=config.snr,
                seed=config.seed + seed_offset,
                phantom_fraction=config.phantom_fraction,
            )
            return dataclasses.asdict(examples)

        recipe = {**config.data_recipe(), **phantom_recipe(config.phantom_fraction), "split": name}
        sets.append(ReconExamples(**load_or_make(out_dir / f"examples_{name}.pt", recipe, make)))
    return sets[0], sets[1]


def _save(
    path: Path,
    config: ReconTrainingConfig,
    step: int,
    network: UnrolledRecon,
    optimizer: torch.optim.Optimizer,
    history: TrainingHistory,
) -> None:
    """Write the checkpoint atomically (temporary file, then rename)."""
    state = {
        "config": dataclasses.asdict(config),
        "step": step,
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": dataclasses.asdict(history),
    }
    save_atomic(state, path)


def _resume(
    path: Path,
    config: ReconTrainingConfig,
    network: UnrolledRecon,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, TrainingHistory]:
    """Load a checkpoint into the network, optimizer and random states; return its step and history."""
    state = torch.load(path, weights_only=False)
    refuse_other_config(path, state["config"], dataclasses.asdict(config), growable="steps")
    network.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), TrainingHistory(**state["history"])
