"""The error head: a small CNN that predicts, per phase and pixel, the RMS error of the MC-dropout mean image.

Beyond the PUQ paper. MC dropout alone (the paper's Eq. 2) measures how much the network's output moves when its
activations are dropped; with the CPU-sized networks trained here that spread follows the image intensity rather
than the reconstruction error (Pearson r 0.26 for MOLLI at 8x, and flat in the acceleration), so the weights of the
guided fit were weights on the signal. The head is trained after the reconstruction network, which it leaves
unchanged, by the Gaussian negative log-likelihood of the mean's true error on new simulated slices (Kendall and
Gal 2017's heteroscedastic loss; `qmri_models.training.train_error_head`). It sees what the stream has: the MC mean,
the zero-filled image (how much the network had to fill in) and the MC SD itself.

Shapes (batch first): images `(batch, phases, y, x)` complex, SD `(batch, phases, y, x)` float, all in the
network's scaled units (``qmri_models.networks.puq_recon.input_scale``).
"""

import math

import torch
from torch import nn

from qmri_models.networks.dilated_head import dilated_layers, run_layers, stage_one_features

VARIANCE_FLOOR = 1e-6
"""Smallest predicted error variance, in the network's units (the zero-filled image's 99th percentile is 1)."""
LOG_VARIANCE_RANGE = (-30.0, 10.0)
"""Clamp of the raw log-variance output, so the loss never sees an overflowing exponential."""


class ErrorHead(nn.Module):
    """Four 3x3 convolutions (dilations 1, 2, 4, 1: a 17-pixel field of view), stage-1 output to log-variance."""

    def __init__(self, *, n_phases: int, hidden: int = 32) -> None:
        """Build the head.

        Parameters
        ----------
        n_phases : Phases of the scan.
        hidden : Channels of the hidden layers.
        """
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {hidden}")
        self.n_phases = n_phases
        self.hidden = hidden
        self.layers = dilated_layers(5 * n_phases, hidden, n_phases)  # stage_one_features in, log-variance out

    def start_at(self, variance: float) -> None:
        """Set the output bias so that an untrained head predicts about ``variance`` everywhere."""
        last = self.layers[-1]
        if not isinstance(last, nn.Conv2d) or last.bias is None:
            raise TypeError("the head's last layer must be a convolution with a bias")
        with torch.no_grad():
            last.bias.fill_(math.log(variance))

    def variance(self, mean: torch.Tensor, zero_filled: torch.Tensor, mc_sd: torch.Tensor) -> torch.Tensor:
        """Return the predicted error variance ``E|mean - truth|^2`` of every phase and pixel, `(b, p, y, x)` float.

        Parameters
        ----------
        mean : MC mean images. Shape `(b, p, y, x)` complex.
        zero_filled : Coil-combined zero-filled images. Shape `(b, p, y, x)` complex.
        mc_sd : MC-dropout SD. Shape `(b, p, y, x)` float.
        """
        log_variance = run_layers(self.layers, stage_one_features(mean, zero_filled, mc_sd)).clamp(*LOG_VARIANCE_RANGE)
        return log_variance.exp() + VARIANCE_FLOOR

    def forward(self, mean: torch.Tensor, zero_filled: torch.Tensor, mc_sd: torch.Tensor) -> torch.Tensor:
        """Return the predicted RMS error of the mean, `(b, p, y, x)` float. Inputs as ``variance``'s."""
        return self.variance(mean, zero_filled, mc_sd).sqrt()


def error_nll(variance: torch.Tensor, squared_error: torch.Tensor) -> torch.Tensor:
    """Return the mean Gaussian negative log-likelihood of complex errors, ``|e|^2 / v + log v`` (constants dropped).

    Its minimum over ``v`` is at ``v = |e|^2``, so a head trained by it predicts the expected squared error.

    Parameters
    ----------
    variance : Predicted error variance. Any shape, positive.
    squared_error : ``|mean - truth|^2``. Same shape.
    """
    return (squared_error / variance + variance.log()).mean()
