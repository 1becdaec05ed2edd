"""PUQ's learned parameter fit: a pixelwise MLP from the signal and its per-phase uncertainty to T1 or T2.

The paper's MLP: five fully connected layers of 64 units with ReLU; input the signal along the phases and its
per-phase uncertainty, both divided by the signal of the first phase; output the relaxation time. Here both are
divided by the pixel's largest signal magnitude over the phases instead: MOLLI's first TI (251 ms) falls on the
null of tissues with a T1 near 400 ms (fat), where the first-phase signal is close to zero and the normalised
inputs blow up; T2-prep's first phase is its largest, so for T2 the two normalisations are the same.
The output is the relaxation time divided by ``scale_ms`` (1000 ms for T1, 100 ms for T2), so the MSE loss
sees numbers near 1.
"""

import itertools

import torch
from torch import nn

SCALE_MS: dict[str, float] = {"t1": 1000.0, "t2": 100.0}
"""Relaxation time that the MLP's output 1.0 stands for, per map."""


def mlp_features(magnitude: torch.Tensor, sd: torch.Tensor | None) -> torch.Tensor:
    """Return the MLP's input: signal and uncertainty divided by the pixel's largest signal.

    Parameters
    ----------
    magnitude : Signal magnitude along the phases. Shape `(pixels, phases)` real.
    sd : Per-phase uncertainty (``McEstimate.uncertainty``) in the signal's units, shape `(pixels, phases)`;
        None for the unguided fit (the uncertainty inputs are zero).

    Returns
    -------
    Features. Shape `(pixels, 2 * phases)` float32.
    """
    if magnitude.ndim != 2:
        raise ValueError(f"magnitude must be (pixels, phases), got shape {tuple(magnitude.shape)}")
    if sd is not None and sd.shape != magnitude.shape:
        raise ValueError(f"sd must have the magnitude's shape {tuple(magnitude.shape)}, got {tuple(sd.shape)}")
    norm = magnitude.amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    uncertainty = torch.zeros_like(magnitude) if sd is None else sd / norm
    return torch.cat([magnitude / norm, uncertainty], dim=1).to(torch.float32)


class FitMlp(nn.Module):
    """Five fully connected layers (``hidden`` units, ReLU between) from the features to the scaled map."""

    def __init__(self, *, n_phases: int, hidden: int = 64, guided: bool = True, map_name: str = "t1") -> None:
        """Build the network.

        Parameters
        ----------
        n_phases : Phases of the scan.
        hidden : Units of the four hidden layers.
        guided : Whether it was trained with the uncertainty inputs (False: the ablation, inputs zero).
        map_name : ``t1`` or ``t2``: which map and output scale.
        """
        super().__init__()
        if map_name not in SCALE_MS:
            raise ValueError(f"map_name must be t1 or t2, got {map_name!r}")
        self.n_phases, self.hidden, self.guided, self.map_name = n_phases, hidden, guided, map_name
        widths = [2 * n_phases, hidden, hidden, hidden, hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(hidden, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the scaled map of every pixel. ``features`` `(pixels, 2 * phases)`; returns `(pixels,)`."""
        return self.layers(features).squeeze(-1)

    def predict_ms(self, magnitude: torch.Tensor, sd: torch.Tensor | None) -> torch.Tensor:
        """Return T1 or T2 in ms (at least 0) of every pixel.

        Parameters
        ----------
        magnitude : Signal magnitude. Shape `(pixels, phases)`.
        sd : Per-phase uncertainty, shape `(pixels, phases)`; ignored (zeros) when the network is unguided.

        Returns
        -------
        Relaxation time in ms. Shape `(pixels,)` float32.
        """
        features = mlp_features(magnitude, sd if self.guided else None)
        return (self(features) * SCALE_MS[self.map_name]).clamp(min=0.0)
