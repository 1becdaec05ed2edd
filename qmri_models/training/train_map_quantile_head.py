"""Training of the map quantile head (``qmri_models.networks.map_quantile_head``) by the pinball loss (seed 001).

The head learns, from maps whose truth is known (replayed simulated slices, never the calibration's), the alpha/2
and 1 - alpha/2 quantiles of the map's relative error ``(truth - map) / map`` per pixel: the lower offset is scored
at quantile alpha/2 against that error, the upper at 1 - alpha/2 (``qmri_models.calibration.pinball``). Relative
units weigh a long-T1 CSF pixel as a white-matter one. A tenth of the slices (at least one) is held out to report the
loss on slices the head did not fit.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qmri_models.calibration.pinball import pinball_loss
from qmri_models.networks.map_quantile_head import FEATURE_CLIP, MapQuantileHead, map_features


@dataclass(frozen=True)
class QuantileHeadTraining:
    """How the head is trained."""

    alpha: float = 0.1
    """Miscoverage the offsets are trained for: quantiles alpha/2 and 1 - alpha/2."""
    hidden: int = 32
    """Channels of the head's hidden layers."""
    epochs: int = 40
    """Passes over the training slices."""
    batch: int = 8
    """Slices per step."""
    learning_rate: float = 1e-3
    """Adam's step size."""
    seed: int = 0
    """Seed of the initial weights, the slice order and the held-out split."""


@dataclass(frozen=True)
class TrainedQuantileHead:
    """The trained head and its losses."""

    head: MapQuantileHead
    train_loss: float
    """Mean pinball loss (both quantiles, relative units) on the training slices after the last epoch."""
    held_out_loss: float
    """The same on the held-out slices."""
    held_out_coverage: float
    """Fraction of held-out mask pixels inside the uncalibrated interval (scale 1): about 1 - alpha if it learned."""


def train_map_quantile_head(
    value: np.ndarray,
    sd: np.ndarray,
    model_fit: np.ndarray | None,
    truth: np.ndarray,
    mask: np.ndarray,
    *,
    quantity: str,
    settings: QuantileHeadTraining = QuantileHeadTraining(),
    progress: Callable[[int, float], None] | None = None,
) -> TrainedQuantileHead:
    """Return a head trained to bound maps' relative error at quantiles alpha/2 and 1 - alpha/2.

    Parameters
    ----------
    value : Maps (ms), 0 where the fit kept no pixel. Shape `(slices, y, x)`, at least 2 slices.
    sd : Their SD (ms). Same shape.
    model_fit : The model-based fit beside learned maps (ms), or None. Same shape.
    truth : True maps (ms). Same shape.
    mask : Pixels whose error trains the head (the object's kept pixels), bool. Same shape.
    quantity : T1 or T2.
    settings : Training settings.
    progress : Called after each epoch with the epoch number (from 1) and its mean training loss.

    Returns
    -------
    The head (eval mode, on the CPU) and its losses.
    """
    n_slices = len(value)
    if n_slices < 2:
        raise ValueError(f"training needs at least 2 slices (one held out), got {n_slices}")
    mask = np.asarray(mask, dtype=bool) & (value > 0)
    if not mask.any():
        raise ValueError("the mask keeps no pixel with a positive map value")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(n_slices)
    n_held = max(1, n_slices // 10)
    held, train = order[:n_held], order[n_held:]
    features = map_features(value, sd, model_fit, value > 0, quantity=quantity)
    safe = np.where(mask, value, 1.0)
    relative_error = torch.from_numpy(np.clip((truth - value) / safe, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32))
    weights = torch.from_numpy(mask.astype(np.float32))
    head = MapQuantileHead(quantity=quantity, alpha=settings.alpha, hidden=settings.hidden)
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.learning_rate)

    def loss_of(indices: np.ndarray) -> torch.Tensor:
        offsets = head(features[indices])
        return _masked_pinball(offsets, relative_error[indices], weights[indices], settings.alpha)

    train_loss = float("nan")
    for epoch in range(1, settings.epochs + 1):
        head.train()
        shuffled = rng.permutation(train)
        losses = []
        for start in range(0, len(shuffled), settings.batch):
            optimiser.zero_grad()
            loss = loss_of(shuffled[start : start + settings.batch])
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        train_loss = float(np.mean(losses))
        if progress is not None:
            progress(epoch, train_loss)
    head.eval()
    with torch.no_grad():
        held_out_loss = float(loss_of(held).detach())
        offsets = head(features[held]).numpy()
    error = relative_error[held].numpy()
    inside = (-offsets[:, 0] <= error) & (error <= offsets[:, 1])
    return TrainedQuantileHead(head, train_loss, held_out_loss, float(inside[mask[held]].mean()))


def _masked_pinball(offsets: torch.Tensor, error: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Return the pinball loss of the lower (-offset at alpha/2) and upper (offset at 1 - alpha/2) bounds, masked.

    ``pinball_loss`` averages over what it is given, so the masked pixels are selected first.
    """
    keep = weights > 0
    lower = pinball_loss(-offsets[:, 0][keep], error[keep], alpha / 2)
    upper = pinball_loss(offsets[:, 1][keep], error[keep], 1 - alpha / 2)
    return lower + upper
