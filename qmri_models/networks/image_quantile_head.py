"""The image quantile head: seed 001's two quantile heads on top of the frozen PUQ reconstruction, per phase image.

It sees what the error head sees (``qmri_models.networks.error_head``: the MC mean, the zero-filled image and the MC
SD of every phase, in the network's scaled units) and predicts, per phase and pixel, how far below and above the MC
mean's magnitude the true magnitude lies at quantiles alpha/2 and 1 - alpha/2, each as ``sigmoid(output) x |mean|``
as the paper does; a calibrated scale then widens or narrows both (``qmri_models.calibration.intervals``).
Shapes (batch first): images `(batch, phases, y, x)` complex, SD `(batch, phases, y, x)` float.
"""

import torch
from torch import nn

from qmri_models.networks.dilated_head import dilated_layers, run_layers, stage_one_features


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
        self.layers = dilated_layers(5 * n_phases, hidden, 2 * n_phases)  # stage_one_features in

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
        fractions = torch.sigmoid(run_layers(self.layers, stage_one_features(mean, zero_filled, mc_sd)))
        magnitude = mean.abs()
        return fractions[:, : self.n_phases] * magnitude, fractions[:, self.n_phases :] * magnitude
