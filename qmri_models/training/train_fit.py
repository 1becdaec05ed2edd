"""Training of PUQ's learned fit (stage 2) on the stage-1 output of simulated slices, guided and unguided together.

The data are the paper's: for every simulated slice the trained reconstruction network's MC mean and per-phase SD,
pixel by pixel in the signal mask and the object (tissue, or a phantom's spheres and fluid), with the true T1 or T2
as the target. They are made once and cached in ``OUT/pixels_{train,val}.pt`` (keyed by the data recipe and the
reconstruction weights), so a rerun resumes there. The two MLPs (with the uncertainty inputs, and with them zero:
the ablation) see the same batches; both are checkpointed after every epoch in ``OUT/checkpoint.pt`` and a rerun
with the same configuration resumes (only ``epochs`` may grow). The result is ``OUT/fit_weights.pt``, which
``qmri_models.pretrained.load_fit_mlp`` reads.
"""

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from qmri_models.fitting.maps import signal_mask
from qmri_models.networks.fit_mlp import SCALE_MS, FitMlp, mlp_features
from qmri_models.pretrained import load_recon_network
from qmri_models.training.checkpoints import load_or_make, refuse_other_config, save_atomic
from qmri_models.training.configs import FitLoss, FitTrainingConfig
from qmri_models.training.recon_data import (
    mc_estimates,
    phantom_recipe,
    simulate_stage_one,
    stage_one_phantoms,
    stage_one_recipe,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "fit_weights.pt"
HISTORY = "history.json"


@dataclass
class FitHistory:
    """Validation RMSE (ms) of both MLPs after every epoch."""

    epochs: list[int] = field(default_factory=list)
    val_rmse_guided_ms: list[float] = field(default_factory=list)
    val_rmse_unguided_ms: list[float] = field(default_factory=list)
    n_train_pixels: int = 0
    n_val_pixels: int = 0
    wall_s: float = 0.0
    val_rmse_by_object_ms: dict[str, float] = field(default_factory=dict)
    """Final validation RMSE (ms) of each MLP on brain and on phantom pixels apart (``"guided brain"``, ...)."""
    val_median_ape_by_object: dict[str, float] = field(default_factory=dict)
    """Final validation median absolute percentage error (%) of each MLP on brain and phantom pixels apart."""


@dataclass(frozen=True)
class FitPixels:
    """Stage-1 output of tissue pixels with their truth."""

    magnitude: torch.Tensor
    """MC mean magnitude. Shape `(pixels, phases)` float32."""
    sd: torch.Tensor
    """Per-phase uncertainty (``McEstimate.uncertainty``). Shape `(pixels, phases)` float32."""
    truth_ms: torch.Tensor
    """True T1 or T2 in ms. Shape `(pixels,)` float32."""
    phantom: torch.Tensor
    """Whether the pixel lies in a phantom slice (else a brain slice). Shape `(pixels,)` bool."""

    def subset(self, keep: torch.Tensor) -> "FitPixels":
        """Return the pixels where ``keep`` (shape `(pixels,)` bool) is true."""
        return FitPixels(self.magnitude[keep], self.sd[keep], self.truth_ms[keep], self.phantom[keep])


def train_fit(
    config: FitTrainingConfig,
    out_dir: Path,
    *,
    device: str | torch.device = "cpu",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> FitHistory:
    """Train (or resume) the guided and unguided MLPs; return the history.

    Parameters
    ----------
    config : What to train.
    out_dir : Where the pixel caches, checkpoint, weights and history go.
    device : Torch device.
    on_progress : Called with a stage (``"slices"`` or ``"epochs"``), done and total (progress bars).

    Returns
    -------
    Validation history, also in ``out_dir/history.json``.

    Raises
    ------
    ValueError
        If ``out_dir`` holds a checkpoint of a different configuration.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    recipe = stage_one_recipe(config)
    train_px = _pixels(config, "train", recipe, out_dir, device, on_progress)
    val_px = _pixels(config, "val", recipe, out_dir, device, on_progress)
    torch.manual_seed(config.seed)
    n_phases = int(train_px.magnitude.shape[1])
    nets = {
        g: FitMlp(n_phases=n_phases, hidden=config.hidden, guided=g, map_name=config.map_name) for g in (True, False)
    }
    for net in nets.values():
        net.to(device)
    optimizers: dict[bool, torch.optim.Optimizer] = {
        g: torch.optim.Adam(nets[g].parameters(), lr=config.learning_rate) for g in nets
    }
    history = FitHistory(n_train_pixels=len(train_px.truth_ms), n_val_pixels=len(val_px.truth_ms))
    epoch = 0
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        epoch, history = _resume(checkpoint, config, nets, optimizers)
        log.info("resuming %s at epoch %d of %d", out_dir, epoch, config.epochs)
    features = {g: mlp_features(train_px.magnitude, train_px.sd if g else None) for g in nets}
    target = train_px.truth_ms / SCALE_MS[config.map_name]
    started, wall_before = time.perf_counter(), history.wall_s
    while epoch < config.epochs:
        order = torch.randperm(len(target), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
        for begin in range(0, len(order), config.batch_size):
            batch = order[begin : begin + config.batch_size]
            for g, net in nets.items():
                loss = fit_loss(net(features[g][batch].to(device)), target[batch].to(device), config.loss)
                optimizers[g].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[g].step()
        epoch += 1
        history.epochs.append(epoch)
        history.val_rmse_guided_ms.append(validation_rmse_ms(nets[True], val_px, device))
        history.val_rmse_unguided_ms.append(validation_rmse_ms(nets[False], val_px, device))
        history.wall_s = wall_before + time.perf_counter() - started
        _save_checkpoint(checkpoint, config, epoch, nets, optimizers, history)
        if on_progress is not None:
            on_progress("epochs", epoch, config.epochs)
    history.val_rmse_by_object_ms = by_object(nets, val_px, device, validation_rmse_ms)
    history.val_median_ape_by_object = by_object(nets, val_px, device, validation_median_ape)
    weights = {
        "map_name": config.map_name,
        "config": dataclasses.asdict(config),
        **phantom_recipe(config.phantom_fraction),
        "history": dataclasses.asdict(history),
        **{
            ("guided" if g else "unguided"): {
                "n_phases": n_phases,
                "hidden": config.hidden,
                "state_dict": net.state_dict(),
            }
            for g, net in nets.items()
        },
    }
    torch.save(weights, out_dir / WEIGHTS)
    (out_dir / HISTORY).write_text(json.dumps(dataclasses.asdict(history), indent=2))
    return history


def fit_loss(predicted: torch.Tensor, target: torch.Tensor, loss: FitLoss) -> torch.Tensor:
    """Return the training loss of scaled maps against their positive scaled truth (both shape `(pixels,)`).

    ``relative`` is the mean of ``((predicted - target) / target)^2``: an error weighs by its share of the true value,
    as the maps are judged (percentage errors per tissue and sphere). Under ``mse`` (the paper's) the pixels with long
    relaxation times dominate: CSF and a phantom's container fluid, T2 of 1000-2000 ms that T2-prep durations up to
    125 ms cannot measure, pull every slowly decaying signal towards their values.
    """
    if loss == "relative":
        return ((predicted - target) / target).square().mean()
    return functional.mse_loss(predicted, target)


def validation_rmse_ms(mlp: FitMlp, pixels: FitPixels, device: torch.device) -> float:
    """Return the RMSE in ms of the MLP's maps against the truth over the pixels."""
    return float((_predicted_ms(mlp, pixels, device) - pixels.truth_ms).square().mean().sqrt())


def validation_median_ape(mlp: FitMlp, pixels: FitPixels, device: torch.device) -> float:
    """Return the median absolute percentage error (%) of the MLP's maps against the truth over the pixels."""
    error = (_predicted_ms(mlp, pixels, device) - pixels.truth_ms) / pixels.truth_ms
    return float(100.0 * error.abs().median())


def by_object(
    nets: Mapping[bool, FitMlp],
    pixels: FitPixels,
    device: torch.device,
    metric: Callable[[FitMlp, FitPixels, torch.device], float],
) -> dict[str, float]:
    """Return ``metric`` of each MLP on the brain and on the phantom pixels apart (``"guided brain"``, ...).

    Only objects with pixels get an entry.
    """
    figures = {}
    for name, keep in (("brain", ~pixels.phantom), ("phantom", pixels.phantom)):
        if bool(keep.any()):
            for g, net in nets.items():
                figures[f"{'guided' if g else 'unguided'} {name}"] = metric(net, pixels.subset(keep), device)
    return figures


def _predicted_ms(mlp: FitMlp, pixels: FitPixels, device: torch.device) -> torch.Tensor:
    """Return the MLP's map (ms) of the pixels, on the CPU. Shape `(pixels,)`."""
    mlp.eval()
    with torch.inference_mode():
        predicted = mlp.predict_ms(pixels.magnitude.to(device), pixels.sd.to(device)).cpu()
    mlp.train()
    return predicted


def stage_one_pixels(
    config: FitTrainingConfig,
    split: str,
    device: torch.device,
    on_slice: Callable[[int], None] | None = None,
) -> FitPixels:
    """Return the stage-1 output (MC mean magnitude, uncertainty) of the split's simulated slices, object pixels only.

    Parameters
    ----------
    config : Data recipe and the reconstruction weights.
    split : ``train`` or ``val`` (its own seeds).
    device : Where the network runs.
    on_slice : Called with the number of slices done.
    """
    examples = simulate_stage_one(config, split)
    phantoms = stage_one_phantoms(config, split)
    if examples.truth_ms is None:
        raise ValueError("the simulated examples carry no truth maps")
    network = load_recon_network(config.recon_weights).to(device)
    parts: dict[str, list[torch.Tensor]] = {"magnitude": [], "sd": [], "truth": [], "phantom": []}
    for i, estimate in enumerate(mc_estimates(network, examples, n_samples=config.mc_samples, device=device)):
        mean = estimate.mean.cpu()
        keep = torch.from_numpy(signal_mask(mean.numpy(), 0.08)) & (examples.truth_ms[i] > 0)
        parts["magnitude"].append(mean.abs()[:, keep].T)
        parts["sd"].append(estimate.uncertainty.cpu()[:, keep].T)
        parts["truth"].append(examples.truth_ms[i][keep])
        parts["phantom"].append(torch.full((int(keep.sum()),), bool(phantoms[i])))
        if on_slice is not None:
            on_slice(i + 1)
    return FitPixels(
        magnitude=torch.cat(parts["magnitude"]).float(),
        sd=torch.cat(parts["sd"]).float(),
        truth_ms=torch.cat(parts["truth"]).float(),
        phantom=torch.cat(parts["phantom"]),
    )


def _pixels(
    config: FitTrainingConfig,
    split: str,
    data_recipe: dict[str, Any],
    out_dir: Path,
    device: torch.device,
    on_progress: Callable[[str, int, int], None] | None,
) -> FitPixels:
    """Return the split's pixels from the cache in ``out_dir``, made (and cached) when missing or stale."""
    n = config.n_train if split == "train" else config.n_val

    def on_slice(done: int) -> None:
        if on_progress is not None:
            on_progress(f"{split} slices", done, n)

    def make() -> dict[str, Any]:
        log.info("running stage 1 (%d MC samples) on %d %s slices for %s", config.mc_samples, n, split, out_dir)
        return dataclasses.asdict(stage_one_pixels(config, split, device, on_slice))

    return FitPixels(**load_or_make(out_dir / f"pixels_{split}.pt", {**data_recipe, "split": split}, make))


def _save_checkpoint(
    path: Path,
    config: FitTrainingConfig,
    epoch: int,
    nets: dict[bool, FitMlp],
    optimizers: Mapping[bool, torch.optim.Optimizer],
    history: FitHistory,
) -> None:
    """Write the checkpoint atomically."""
    state = {
        "config": dataclasses.asdict(config),
        "epoch": epoch,
        "nets": {g: n.state_dict() for g, n in nets.items()},
        "optimizers": {g: o.state_dict() for g, o in optimizers.items()},
        "torch_rng": torch.get_rng_state(),
        "history": dataclasses.asdict(history),
    }
    save_atomic(state, path)


def _resume(
    path: Path,
    config: FitTrainingConfig,
    nets: dict[bool, FitMlp],
    optimizers: Mapping[bool, torch.optim.Optimizer],
) -> tuple[int, FitHistory]:
    """Load a checkpoint; return its epoch and history."""
    state = torch.load(path, weights_only=False)
    refuse_other_config(path, state["config"], dataclasses.asdict(config), growable="epochs")
    for g, net in nets.items():
        net.load_state_dict(state["nets"][g])
        optimizers[g].load_state_dict(state["optimizers"][g])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), FitHistory(**state["history"])
