"""A deep ensemble of reconstruction networks: the other way to sample the reconstruction's uncertainty.

Where MC dropout draws T forward passes of one network with dropout on, a deep ensemble (Lakshminarayanan et al.;
seed 002 uses one of independently initialised reconstruction networks) runs M independently trained networks once
each, dropout off, and takes the spread over their images. The estimate has MC dropout's form
(``mc_sampling.McEstimate``: mean, SD over the members, the members' images as the samples), so the guided fit and
every evaluation take either.
"""

from collections.abc import Sequence

import numpy as np
import torch

from qmri_models.networks.mc_sampling import McEstimate
from qmri_models.networks.puq_recon import deterministic_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon


def check_members(members: Sequence[UnrolledRecon]) -> int:
    """Return the members' number of phases, or raise if they are fewer than 2 or disagree on it.

    Raises
    ------
    ValueError
        If there are fewer than 2 members (no spread) or their phases differ (the list says whose).
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members for a standard deviation, got {len(members)}")
    phases = [member.n_phases for member in members]
    if len(set(phases)) != 1:
        raise ValueError(f"ensemble members must reconstruct the same number of phases, got {phases} (member order)")
    return phases[0]


def ensemble_reconstruct(
    members: Sequence[UnrolledRecon],
    kdata: np.ndarray,
    sampled: np.ndarray,
    sens: np.ndarray,
    *,
    device: str | torch.device = "cpu",
) -> McEstimate:
    """Return the ensemble's mean, per-phase SD over the members and every member's images, in ``kdata``'s units.

    Each member runs once with dropout off (``deterministic_reconstruct``: scaled as in training, scaled back).

    Parameters
    ----------
    members : The M >= 2 trained networks, on ``device``, all of one number of phases.
    kdata : Measured k-space, zero where not sampled. Shape `(phases, coils, ky, kx)` complex.
    sampled : Sampled lines. Shape `(phases, ky)` bool.
    sens : ESPIRiT coil sensitivities. Shape `(coils, y, x)` complex.
    device : Torch device.

    Returns
    -------
    Mean `(phases, y, x)` complex64; SD ``sqrt(mean_m |x_m - mean|^2)`` (MC dropout's, over members)
    `(phases, y, x)` float32; ``samples`` the members' images `(M, phases, y, x)` complex64, in member order;
    ``n_samples`` M; no error SD. All on ``device``.
    """
    check_members(members)
    images = torch.stack([deterministic_reconstruct(m, kdata, sampled, sens, device=device) for m in members])
    mean = images.mean(dim=0)
    sd = torch.sqrt((images - mean).abs().square().mean(dim=0))
    return McEstimate(mean=mean, sd=sd, n_samples=len(members), samples=images)
