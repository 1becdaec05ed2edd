"""PUQ stage 1 on one slice in scanner units: scale as in training, run the network (MC or not), scale back.

The network works at one intensity scale: the k-space divided by ``input_scale``, the zero-filled image's 99th
percentile magnitude (training scales its examples the same way).
"""

from collections.abc import Callable

import numpy as np
import torch

from qmri_models.networks.mc_sampling import McEstimate, mc_sample
from qmri_models.networks.unrolled import UnrolledRecon, sens_reduce


def input_scale(kdata: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Return the 99th percentile of the zero-filled image's magnitude, per example.

    Parameters
    ----------
    kdata : K-space. Shape `(n, phases, coils, ky, kx)` complex.
    sens : Coil sensitivities. Shape `(n, coils, y, x)` complex.

    Returns
    -------
    Scale. Shape `(n,)`, positive.
    """
    magnitude = sens_reduce(kdata, sens).abs().flatten(1)
    return torch.quantile(magnitude, 0.99, dim=1).clamp(min=torch.finfo(magnitude.dtype).tiny)


def puq_reconstruct(
    network: UnrolledRecon,
    kdata: np.ndarray,
    sampled: np.ndarray,
    sens: np.ndarray,
    *,
    n_samples: int = 100,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    keep_samples: bool = False,
    on_batch: Callable[[int], None] | None = None,
    seed: int | None = None,
) -> McEstimate:
    """Return the MC-dropout mean, per-phase SD (and samples) of one slice, in the units of ``kdata``.

    The k-space is divided by the zero-filled image's 99th percentile, the scale the network was trained at, and
    the results multiplied back.

    Parameters
    ----------
    network : Trained reconstruction network.
    kdata : Measured k-space, zero where not sampled. Shape `(phases, coils, ky, kx)` complex.
    sampled : Sampled lines. Shape `(phases, ky)` bool.
    sens : ESPIRiT coil sensitivities. Shape `(coils, y, x)` complex.
    n_samples : MC samples T.
    device : Torch device.
    batch_size : Samples per forward pass (None: memory-sized on CUDA, 1 on the CPU; 1 is the paper's way).
    keep_samples : Also return every sample.
    on_batch : Progress callback, as ``mc_sample``'s.
    seed : Seed of the dropout masks, as ``mc_sample``'s (None: torch's global generator).

    Returns
    -------
    Mean `(phases, y, x)` complex64, SD and (with an error head) predicted error SD `(phases, y, x)` float32,
    samples `(T, phases, y, x)` complex64 or None, all on ``device``.
    """
    k, lines, s, scale = _inputs(kdata, sampled, sens, device)
    estimate = mc_sample(
        network,
        k,
        lines,
        s,
        n_samples=n_samples,
        batch_size=batch_size,
        keep_samples=keep_samples,
        on_batch=on_batch,
        seed=seed,
    )
    return estimate.scaled(scale)


def deterministic_reconstruct(
    network: UnrolledRecon, kdata: np.ndarray, sampled: np.ndarray, sens: np.ndarray, *, device: str | torch.device
) -> torch.Tensor:
    """Return the network's images of one slice with dropout off, in the units of ``kdata``.

    Parameters are as ``puq_reconstruct``'s. Returns shape `(phases, y, x)` complex64 on ``device``.
    """
    k, lines, s, scale = _inputs(kdata, sampled, sens, device)
    was_training, was_sampling = network.training, network.mc_dropout
    network.eval()
    network.mc_dropout = False
    try:
        with torch.inference_mode():
            return network(k[None], lines[None], s[None])[0] * scale
    finally:
        network.train(was_training)
        network.mc_dropout = was_sampling


def _inputs(
    kdata: np.ndarray, sampled: np.ndarray, sens: np.ndarray, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the scaled k-space, lines and maps as tensors on ``device``, and the scale."""
    if kdata.ndim != 4:
        raise ValueError(f"kdata must be (phases, coils, ky, kx), got shape {kdata.shape}")
    k = torch.as_tensor(np.asarray(kdata, dtype=np.complex64), device=device)
    s = torch.as_tensor(np.asarray(sens, dtype=np.complex64), device=device)
    lines = torch.as_tensor(np.asarray(sampled, dtype=bool), device=device)
    scale = input_scale(k[None], s[None])[0]
    return k / scale, lines, s, scale
