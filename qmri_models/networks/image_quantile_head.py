"""The image quantile head: seed 001's two quantile heads on top of the frozen PUQ reconstruction, per phase image.

It sees what the error head sees (``qmri_models.networks.error_head``: the MC mean, the zero-filled image and the MC
SD of every phase, in the network's scaled units) and predicts, per phase and pixel, how far below and above the MC
mean's magnitude the true magnitude lies at quantiles alpha/2 and 1 - alpha/2, each as ``sigmoid(output) x |mean|``
as the paper does; a calibrated scale then widens or narrows both (``qmri_models.calibration.intervals``).
Shapes (batch first): images `(batch, phases, y, x)` complex, SD `(batch, phases, y, x)` float.
"""

import torch
from torch import nn
from torch.nn import functional


class ImageQuantileHead(nn.Module):
    """Four 3x3 convolutions (dilations 1, 2, 4, 1: a 17-pixel field of view), stage-1 output to two offsets."""

    def __init__(self, *, n_phases: int, hidden: int = 32) -> None:
        """Build the head.

        Parameters
        ----------
        n_phases : Phases of the scan.
        hidden : Channels of the hidden layers.
        """
        super().__init__()
        if n_phases < 1 or hidden < 1:
            raise ValueError(f"n_phases and hidden must be at least 1, got {n_phases} and {hidden}")
        self.n_phases = n_phases
        self.layers = nn.ModuleList(
            [
                nn.Conv2d(5 * n_phases, hidden, 3, padding=1),  # mean, zero-filled (real, imaginary), MC SD
                nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
                nn.Conv2d(hidden, hidden, 3, padding=4, dilation=4),
                nn.Conv2d(hidden, 2 * n_phases, 3, padding=1),
            ]
        )

    def forward(
        self, mean: torch.Tensor, zero_filled: torch.Tensor, mc_sd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the lower and upper offsets of the magnitude, each `(b, p, y, x)` float in [0, |mean|].

        Parameters
        ----------
        mean : MC mean images. Shape `(b, p, y, x)` complex.
        zero_filled : Coil-combined zero-filled images. Shape `(b, p, y, x)` complex.
        mc_sd : MC-dropout SD. Shape `(b, p, y, x)` float.
        """
        x = torch.cat([mean.real, mean.imag, zero_filled.real, zero_filled.imag, mc_sd], dim=1)
        for layer in self.layers[:-1]:
            x = functional.relu(layer(x))
        fractions = torch.sigmoid(self.layers[-1](x))
        magnitude = mean.abs()
        return fractions[:, : self.n_phases] * magnitude, fractions[:, self.n_phases :] * magnitude
