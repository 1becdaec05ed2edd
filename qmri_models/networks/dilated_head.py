"""The small dilated CNN every head shares, and the stage-1 features the image heads see.

Four 3x3 convolutions with dilations 1, 2, 4, 1 (a 17-pixel field of view), ReLU between them: the error head, the
image quantile head and the map quantile head differ only in what goes in and what comes out.
"""

import torch
from torch import nn
from torch.nn import functional


def dilated_layers(inputs: int, hidden: int, outputs: int) -> nn.ModuleList:
    """Return the four convolutions from ``inputs`` to ``outputs`` channels through ``hidden`` ones."""
    if min(inputs, hidden, outputs) < 1:
        raise ValueError(f"channels must be at least 1, got inputs {inputs}, hidden {hidden}, outputs {outputs}")
    return nn.ModuleList(
        [
            nn.Conv2d(inputs, hidden, 3, padding=1),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
            nn.Conv2d(hidden, hidden, 3, padding=4, dilation=4),
            nn.Conv2d(hidden, outputs, 3, padding=1),
        ]
    )


def run_layers(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Return the last layer's raw output of ``x`` `(b, inputs, y, x)`, ReLU after every layer but the last."""
    for layer in layers[:-1]:
        x = functional.relu(layer(x))
    out: torch.Tensor = layers[-1](x)
    return out


def stage_one_features(mean: torch.Tensor, zero_filled: torch.Tensor, mc_sd: torch.Tensor) -> torch.Tensor:
    """Return the image heads' input: mean (real, imaginary), zero-filled (real, imaginary), MC SD, `(b, 5p, y, x)`.

    Parameters
    ----------
    mean : MC mean images. Shape `(b, p, y, x)` complex.
    zero_filled : Coil-combined zero-filled images. Shape `(b, p, y, x)` complex.
    mc_sd : MC-dropout SD. Shape `(b, p, y, x)` float.
    """
    return torch.cat([mean.real, mean.imag, zero_filled.real, zero_filled.imag, mc_sd], dim=1)
