"""``qmri train map-quantile-head``: a chain's map quantile head, trained on maps the chain makes of simulated slices.

The slices are the calibration recipe's kind (``gadgets.calibration_run.CalibrationData``) with seeds of their own
(``HEAD_TRAINING_SEED``), apart from the calibration's, its check's and the evaluation's, so the calibration that
later scales the head's offsets sees slices the head never saw. Each acceleration's slices are replayed through the
shipped chain (less its interval and structure gadgets) and kept in the run folder (``training_R<R>.npz``: a rerun
reuses them), then ``qmri_models.training.train_map_quantile_head`` fits the head to every kept object pixel of all
accelerations together. The weights file holds the head, its training settings, the data recipe and the losses.
"""

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gadgets.calibration_run import CalibrationData, map_chain, replay_slices
from qmri_models.calibration.files import load_interval_calibration
from qmri_models.training.train_map_quantile_head import (
    QuantileHeadTraining,
    TrainedQuantileHead,
    train_map_quantile_head,
)

HEAD_TRAINING_SEED = 700_000
"""Base seed of the head's training slices (calibration 100 000, check 200 000, evaluation 400 000, spheres 500 000,
ensembles 600 000)."""
HEAD_TRAINING_SLICES = 30
"""Training slices per acceleration (the shipped heads' number; calibrations take 80 more)."""
WEIGHTS_NAME = "weights.pt"
"""The weights file in the run folder."""


def head_training_data(
    chain_name: str, n_slices: int = HEAD_TRAINING_SLICES
) -> tuple[CalibrationData, tuple[int, ...]]:
    """Return the slices a chain's head trains on and their accelerations.

    They are the recipe and accelerations of the chain's shipped calibration, with ``n_slices`` per acceleration and
    the seed ``HEAD_TRAINING_SEED``.
    """
    shipped = load_interval_calibration(chain_name)
    data = CalibrationData.from_recipe(shipped.recipe)
    return dataclasses.replace(data, n_slices=n_slices, seed=HEAD_TRAINING_SEED), shipped.accelerations


def train_chain_quantile_head(
    chain_name: str,
    accelerations: Sequence[int],
    data: CalibrationData,
    settings: QuantileHeadTraining,
    out: Path,
    *,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainedQuantileHead:
    """Return the head trained on ``chain_name``'s maps of ``data``'s slices at ``accelerations``; save it in ``out``.

    Parameters
    ----------
    chain_name : A shipped mapping chain (``gadgets.calibration_run.CalibratedChain``).
    accelerations : Undersampling factors to replay (those it will be calibrated at).
    data : The slices per acceleration (their seed should be ``HEAD_TRAINING_SEED``).
    settings : Training settings (alpha, size, epochs).
    out : Run folder: kept maps and ``WEIGHTS_NAME``.
    progress : Show replay progress bars on stderr.
    on_epoch : Called after each epoch with its number and mean loss.

    Returns
    -------
    The trained head and its losses.
    """
    chain = map_chain(chain_name)
    maps = [replay_slices(chain, data, a, progress=progress, keep=out / f"training_R{a}.npz") for a in accelerations]
    model_fits = [m.model_fit for m in maps]
    trained = train_map_quantile_head(
        np.concatenate([m.value for m in maps]),
        np.concatenate([m.sd for m in maps]),
        None if any(f is None for f in model_fits) else np.concatenate(model_fits),  # type: ignore[arg-type]
        np.concatenate([m.truth for m in maps]),
        np.concatenate([m.object_mask() for m in maps]),
        quantity=chain.quantity,
        settings=settings,
        progress=on_epoch,
    )
    training: dict[str, Any] = {
        "chain": chain_name,
        "uncertainty": chain.uncertainty,
        "accelerations": list(accelerations),
        "recipe": data.recipe(chain.contrast, accelerations),
        "settings": dataclasses.asdict(settings),
        "train_loss": trained.train_loss,
        "held_out_loss": trained.held_out_loss,
        "held_out_coverage": trained.held_out_coverage,
    }
    out.mkdir(parents=True, exist_ok=True)
    state = {"settings": trained.head.settings(), "state_dict": trained.head.state_dict(), "training": training}
    torch.save(state, out / WEIGHTS_NAME)
    return trained
