"""Training of the error head (``qmri_models.networks.error_head``) on top of a trained PUQ reconstruction network.

The reconstruction network is frozen: for every new simulated slice (seeds apart from the network's training and
the learned fit's) it runs MC dropout once, and the head learns, by the Gaussian negative log-likelihood, the
squared error of the MC mean against the noise-free truth from the mean, the zero-filled image and the MC SD.
Those stage-1 outputs are made once and cached in ``OUT/head_examples_{train,val}.pt`` (keyed by the data recipe
and the reconstruction weights' digest); the head is checkpointed in ``OUT/checkpoint.pt`` and a rerun with the same
configuration resumes (only ``steps`` may grow). The result, ``OUT/weights.pt``, is the reconstruction weights file
with the head added: ``qmri_models.pretrained.load_recon_network`` reads it, and ``qmri train puq-fit`` and
``puq-ship`` take it as the stage-1 network.
"""

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qmri_models.networks.error_head import ErrorHead, error_nll
from qmri_models.networks.unrolled import sens_reduce
from qmri_models.pretrained import load_recon_network, weights_path
from qmri_models.puq_evaluation import uncertainty_error_correlation
from qmri_models.training.checkpoints import load_or_make, refuse_other_config, save_atomic
from qmri_models.training.configs import ErrorHeadTrainingConfig
from qmri_models.training.recon_data import mc_estimates, simulate_stage_one, stage_one_recipe

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
HISTORY = "history.json"


@dataclass
class ErrorHeadHistory:
    """Validation figures along the run."""

    steps: list[int] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    """Mean negative log-likelihood of the validation errors (lower is better)."""
    val_correlation: list[float] = field(default_factory=list)
    """Mean over validation slices of the Pearson r between predicted and true |error|, blurred, in the tissue."""
    val_mc_sd_correlation: float | None = None
    """The same for the MC SD alone: what the head has to beat."""
    val_calibration: list[float] = field(default_factory=list)
    """Mean true squared error over mean predicted variance in the tissue (1: calibrated)."""
    wall_s: float = 0.0


@dataclass(frozen=True)
class HeadExamples:
    """Stage-1 output of whole slices with their true errors, in the network's scaled units."""

    mean: torch.Tensor
    """MC mean. Shape `(n, phases, y, x)` complex64."""
    zero_filled: torch.Tensor
    """Zero-filled coil-combined images. Shape `(n, phases, y, x)` complex64."""
    mc_sd: torch.Tensor
    """MC SD. Shape `(n, phases, y, x)` float32."""
    squared_error: torch.Tensor
    """``|mean - target|^2``. Shape `(n, phases, y, x)` float32."""
    tissue: torch.Tensor
    """Tissue mask. Shape `(n, y, x)` bool."""

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def inputs(self, index: torch.Tensor | slice, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Return the head's inputs (mean, zero-filled, MC SD) of the chosen slices on ``device``."""
        return tuple(t[index].to(device) for t in (self.mean, self.zero_filled, self.mc_sd))


def train_error_head(
    config: ErrorHeadTrainingConfig,
    out_dir: Path,
    *,
    device: str | torch.device = "cpu",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ErrorHeadHistory:
    """Train (or resume) the error head; return its history.

    Parameters
    ----------
    config : What to train.
    out_dir : Where the example caches, checkpoint, weights and history go.
    device : Torch device.
    on_progress : Called with a stage (``"train slices"``, ``"val slices"``, ``"steps"``), done and total.

    Returns
    -------
    Validation history, also in ``out_dir/history.json``.

    Raises
    ------
    ValueError
        If ``out_dir`` holds a checkpoint of a different configuration, or the network already has a head.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    recipe = stage_one_recipe(config)
    train_set = _examples(config, "train", recipe, out_dir, device, on_progress)
    val_set = _examples(config, "val", recipe, out_dir, device, on_progress)
    torch.manual_seed(config.seed)
    head = ErrorHead(n_phases=int(train_set.mean.shape[1]), hidden=config.hidden).to(device)
    head.start_at(float(train_set.squared_error.mean()))
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
    history = ErrorHeadHistory(val_mc_sd_correlation=_mean_correlation(val_set.mc_sd, val_set))
    step = 0
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        step, history = _resume(checkpoint, config, head, optimizer)
        log.info("resuming %s at step %d of %d", out_dir, step, config.steps)
    generator = torch.Generator().manual_seed(config.seed * 7919 + step)
    started, wall_before = time.perf_counter(), history.wall_s
    head.train()
    while step < config.steps:
        batch = torch.randint(0, len(train_set), (min(config.batch_size, len(train_set)),), generator=generator)
        loss = error_nll(head.variance(*train_set.inputs(batch, device)), train_set.squared_error[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        if on_progress is not None:
            on_progress("steps", step, config.steps)
        if step % config.validate_every == 0 or step == config.steps:
            _validate(head, val_set, device, history, step)
            history.wall_s = wall_before + time.perf_counter() - started
            _save_checkpoint(checkpoint, config, step, head, optimizer, history)
            log.info(
                "step %d: validation NLL %.3f, r %.3f (MC SD alone %.3f), calibration %.2f",
                step,
                history.val_nll[-1],
                history.val_correlation[-1],
                history.val_mc_sd_correlation,
                history.val_calibration[-1],
            )
    weights: dict[str, Any] = torch.load(
        weights_path("recon", config.recon_weights), map_location="cpu", weights_only=True
    )
    weights["state_dict"].update({f"error_head.{k}": v.cpu() for k, v in head.state_dict().items()})
    weights["error_head"] = {"config": dataclasses.asdict(config), "history": dataclasses.asdict(history)}
    torch.save(weights, out_dir / WEIGHTS)
    (out_dir / HISTORY).write_text(json.dumps(dataclasses.asdict(history), indent=2))
    return history


def head_examples(config: ErrorHeadTrainingConfig, split: str, device: torch.device) -> HeadExamples:
    """Return the frozen network's MC output and true errors on the split's simulated slices.

    Parameters
    ----------
    config : Data recipe and the reconstruction weights.
    split : ``train`` or ``val`` (its own seeds).
    device : Where the network runs.

    Raises
    ------
    ValueError
        If the reconstruction weights already carry an error head.
    """
    network = load_recon_network(config.recon_weights).to(device)
    if network.error_head is not None:
        raise ValueError(f"{config.recon_weights} already has an error head; train on the plain puq-recon weights")
    examples = simulate_stage_one(config, split)
    estimates = list(mc_estimates(network, examples, n_samples=config.mc_samples, device=device))
    mean = torch.stack([e.mean.cpu() for e in estimates])
    return HeadExamples(
        mean=mean,
        zero_filled=sens_reduce(examples.kdata, examples.sens),
        mc_sd=torch.stack([e.sd.cpu() for e in estimates]),
        squared_error=(mean - examples.target).abs().square(),
        tissue=examples.tissue,
    )


def _validate(
    head: ErrorHead, val_set: HeadExamples, device: torch.device, history: ErrorHeadHistory, step: int
) -> None:
    """Append the validation NLL, correlation and calibration at ``step`` to ``history``."""
    head.eval()
    with torch.inference_mode():
        variance = head.variance(*val_set.inputs(slice(None), device)).cpu()
    head.train()
    tissue = val_set.tissue[:, None].expand_as(variance)
    history.steps.append(step)
    history.val_nll.append(float(error_nll(variance, val_set.squared_error)))
    history.val_correlation.append(_mean_correlation(variance.sqrt(), val_set))
    history.val_calibration.append(float(val_set.squared_error[tissue].mean() / variance[tissue].mean()))


def _mean_correlation(predicted_sd: torch.Tensor, examples: HeadExamples) -> float:
    """Return the mean over slices of the Pearson r of ``predicted_sd`` and |error| (as ``qmri evaluate-puq``'s)."""
    scores = [
        uncertainty_error_correlation(
            predicted_sd[i].numpy(), examples.squared_error[i].sqrt().numpy(), examples.tissue[i].numpy()
        )
        for i in range(len(examples))
    ]
    return float(sum(scores) / len(scores))


def _examples(
    config: ErrorHeadTrainingConfig,
    split: str,
    data_recipe: dict[str, Any],
    out_dir: Path,
    device: torch.device,
    on_progress: Callable[[str, int, int], None] | None,
) -> HeadExamples:
    """Return the split's examples from the cache in ``out_dir``, made (and cached) when missing or stale."""
    n = config.n_train if split == "train" else config.n_val

    def make() -> dict[str, Any]:
        log.info("running stage 1 (%d MC samples) on %d %s slices for %s", config.mc_samples, n, split, out_dir)
        examples = dataclasses.asdict(head_examples(config, split, device))
        if on_progress is not None:
            on_progress(f"{split} slices", n, n)
        return examples

    return HeadExamples(**load_or_make(out_dir / f"head_examples_{split}.pt", {**data_recipe, "split": split}, make))


def _save_checkpoint(
    path: Path,
    config: ErrorHeadTrainingConfig,
    step: int,
    head: ErrorHead,
    optimizer: torch.optim.Optimizer,
    history: ErrorHeadHistory,
) -> None:
    """Write the checkpoint atomically."""
    state = {
        "config": dataclasses.asdict(config),
        "step": step,
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": dataclasses.asdict(history),
    }
    save_atomic(state, path)


def _resume(
    path: Path, config: ErrorHeadTrainingConfig, head: ErrorHead, optimizer: torch.optim.Optimizer
) -> tuple[int, ErrorHeadHistory]:
    """Load a checkpoint; return its step and history."""
    state = torch.load(path, weights_only=False)
    refuse_other_config(path, state["config"], dataclasses.asdict(config), growable="steps")
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), ErrorHeadHistory(**state["history"])
