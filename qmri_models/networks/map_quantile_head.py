"""The map quantile head: a small CNN that predicts a map's lower and upper quantile offsets (seed 001, on maps).

Seed 001 trains two heads on top of a frozen reconstruction that predict the alpha/2 and 1 - alpha/2 quantiles of the
true image as offsets below and above it, each ``sigmoid(output) x image``, by the pinball loss; a conformal scale
then widens or narrows both. Here the same sits on top of the frozen learned fit: it sees what MapIntervalGadget has
of a slice (the map, its SD and, beside a learned map, the model-based fit of the same images, series 11, 12, 16) and
predicts, per pixel, the offsets ``lower = sigmoid(o_low) x map`` and ``upper = sigmoid(o_high) x map`` (ms), so each
is at most the map's value. The calibrated interval is ``[map - lambda lower, map + lambda upper]``
(``qmri_models.calibration.intervals``).

Its inputs are dimensionless, so T1 and T2 heads share the design: per pixel, ``log(map / reference)`` (the
quantity's typical value), the relative SD ``SD / map``, the relative disagreement ``(map - model fit) / map`` (0
without a model fit), and the kept mask; each clipped (``FEATURE_CLIP``) so an implausible pixel cannot dominate.
Shapes (batch first): features `(batch, N_FEATURES, y, x)` float32, offsets `(batch, 2, y, x)`.
"""

from typing import Any

import numpy as np
import torch
from torch import nn

from qmri_models.networks.dilated_head import dilated_layers, run_layers

N_FEATURES = 4
"""Input channels: log map, relative SD, relative disagreement, kept mask."""
FEATURE_CLIP = 3.0
"""Every input feature is clipped to [-FEATURE_CLIP, FEATURE_CLIP]."""
REFERENCE_MS = {"T1": 1000.0, "T2": 100.0}
"""Typical value of each quantity (ms): the log map's zero."""


class MapQuantileHead(nn.Module):
    """Four 3x3 convolutions (dilations 1, 2, 4, 1: a 17-pixel field of view), features to the two offset logits."""

    def __init__(self, *, quantity: str, alpha: float, hidden: int = 32) -> None:
        """Build the head.

        Parameters
        ----------
        quantity : The map it bounds (``REFERENCE_MS``'s keys: T1, T2).
        alpha : The miscoverage it is trained for: the offsets estimate the alpha/2 and 1 - alpha/2 quantiles.
        hidden : Channels of the hidden layers.
        """
        super().__init__()
        if quantity not in REFERENCE_MS:
            raise ValueError(f"quantity must be one of {sorted(REFERENCE_MS)}, got {quantity!r}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {hidden}")
        self.quantity = quantity
        self.alpha = alpha
        self.hidden = hidden
        self.layers = dilated_layers(N_FEATURES, hidden, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the relative offsets ``sigmoid(o)`` in (0, 1): `(batch, 2, y, x)`, lower then upper."""
        return torch.sigmoid(run_layers(self.layers, features))

    def settings(self) -> dict[str, Any]:
        """Return what rebuilds the head (``from_state``): quantity, alpha, hidden."""
        return {"quantity": self.quantity, "alpha": self.alpha, "hidden": self.hidden}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "MapQuantileHead":
        """Return the head of a saved state (``{"settings": ..., "state_dict": ...}``), in eval mode."""
        settings = state["settings"]
        head = cls(quantity=str(settings["quantity"]), alpha=float(settings["alpha"]), hidden=int(settings["hidden"]))
        head.load_state_dict(state["state_dict"])
        return head.eval()


def map_features(
    value: np.ndarray, sd: np.ndarray, model_fit: np.ndarray | None, kept: np.ndarray, *, quantity: str
) -> torch.Tensor:
    """Return the head's input features of maps.

    Parameters
    ----------
    value : The maps (ms), any value where not kept. Shape `(slices, y, x)`.
    sd : Their SD (ms). Same shape.
    model_fit : The model-based fit beside a learned map (ms), or None. Same shape.
    kept : Pixels the fit kept, bool. Same shape.
    quantity : The maps' quantity (``REFERENCE_MS``).

    Returns
    -------
    Features, 0 where not kept. Shape `(slices, N_FEATURES, y, x)` float32.
    """
    kept = np.asarray(kept, dtype=bool)
    safe = np.where(kept & (value > 0), value, REFERENCE_MS[quantity])
    disagreement = np.zeros(safe.shape) if model_fit is None else (value - model_fit) / safe
    features = np.stack([np.log(safe / REFERENCE_MS[quantity]), sd / safe, disagreement, np.ones(safe.shape)], axis=1)
    features = np.clip(np.nan_to_num(features), -FEATURE_CLIP, FEATURE_CLIP) * kept[:, None]
    return torch.from_numpy(features.astype(np.float32))


def quantile_offsets(
    head: MapQuantileHead,
    value: np.ndarray,
    sd: np.ndarray,
    model_fit: np.ndarray | None,
    kept: np.ndarray,
    *,
    batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the head's lower and upper offsets (ms) of maps: ``sigmoid(o) x map``, 0 where not kept.

    Parameters
    ----------
    head : The trained head of the maps' quantity.
    value, sd, model_fit, kept : As ``map_features``; shape `(slices, y, x)` or one slice `(y, x)`.
    batch : Slices per forward pass.

    Returns
    -------
    Lower and upper offsets, >= 0, in the maps' unit; the shape of ``value``.
    """
    if np.ndim(value) == 2:
        one = None if model_fit is None else model_fit[None]
        lower, upper = quantile_offsets(head, value[None], sd[None], one, np.asarray(kept)[None], batch=batch)
        return lower[0], upper[0]
    mask = np.asarray(kept, dtype=bool)
    maps = np.where(mask, value, 0.0)
    features = map_features(maps, sd, model_fit, mask, quantity=head.quantity)
    with torch.no_grad():
        relative = torch.cat([head(features[i : i + batch]) for i in range(0, len(features), batch)]).numpy()
    offsets = relative.astype(np.float64) * np.maximum(maps, 0.0)[:, None]
    return offsets[:, 0], offsets[:, 1]
