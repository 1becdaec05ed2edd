"""Monte Carlo dropout sampling of a reconstruction network, the samples run as batches.

The PUQ paper runs T = 100 forward passes one after another (2386.7 ms per image on an A800). Here, on CUDA, the T
samples of one slice go through the network as a few batches (the inputs repeated along the batch axis), sized to
the free memory; their mean and standard deviation are accumulated batch by batch (Chan et al.'s pairwise update),
so no more than one batch of samples is ever held. On the CPU one sample per pass is fastest: a 160^2 slice's
convolutions already use every core, and batches only push the activations out of the caches (measured with
bench/bench_mc_sampling.py: 580 ms per sample one at a time, 712 in pairs, 796 in fours, 1563 in tens, 2 cores).
When the network carries an error head, it is applied once to the samples' mean and SD, and its predicted error SD
becomes the per-phase uncertainty (``McEstimate.uncertainty``).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qmri_models.interrupt import check_interrupt
from qmri_models.networks.unrolled import UnrolledRecon, sens_reduce

CUDA_FREE_FRACTION = 0.5
"""Fraction of the free CUDA memory one batch of samples may take."""
_LIVE_ACTIVATIONS = 8
"""Hidden activation maps alive at once in a denoiser pass, for the memory estimate (measured order, generous)."""


@dataclass(frozen=True)
class McEstimate:
    """Mean and spread of the MC samples of one slice."""

    mean: torch.Tensor
    """Mean image of every phase. Shape `(phases, y, x)` complex64."""
    sd: torch.Tensor
    """SD over the samples, ``sqrt(mean |x_t - mean|^2)`` (the paper's Eq. 2). Shape `(phases, y, x)` float32."""
    n_samples: int
    samples: torch.Tensor | None = None
    """Every sample when kept (to fit each one). Shape `(n_samples, phases, y, x)` complex64, else None."""
    error_sd: torch.Tensor | None = None
    """The error head's predicted RMS error of ``mean``. Shape `(phases, y, x)` float32; None without a head."""

    @property
    def uncertainty(self) -> torch.Tensor:
        """Return the per-phase uncertainty the chain sends and the guided fit weighs by: ``error_sd``, else ``sd``."""
        return self.sd if self.error_sd is None else self.error_sd

    def scaled(self, factor: torch.Tensor) -> "McEstimate":
        """Return the estimate with images, SDs and samples multiplied by ``factor`` (a positive scalar)."""
        return McEstimate(
            mean=self.mean * factor,
            sd=self.sd * factor,
            n_samples=self.n_samples,
            samples=None if self.samples is None else self.samples * factor,
            error_sd=None if self.error_sd is None else self.error_sd * factor,
        )


class RunningMoments:
    """Mean and sum of squared deviations of complex samples, updated one batch at a time (Chan et al.)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, batch: torch.Tensor) -> None:
        """Add a batch of samples. Shape `(samples, ...)`."""
        n = batch.shape[0]
        batch_mean = batch.mean(dim=0)
        batch_m2 = (batch - batch_mean).abs().square().sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta.abs().square() * (self.count * n / total)
        self.count = total

    def sd(self) -> torch.Tensor:
        """Return the population standard deviation of the samples added so far."""
        if self.m2 is None:
            raise ValueError("no samples added")
        return torch.sqrt(self.m2 / self.count)


def samples_per_batch(network: UnrolledRecon, kdata: torch.Tensor, *, free_bytes: int | None = None) -> int:
    """Return how many MC samples of one slice to run per forward pass on ``kdata``'s device.

    Parameters
    ----------
    network : The network (its hidden width sets the activation size).
    kdata : The slice's k-space. Shape `(phases, coils, ky, kx)` complex.
    free_bytes : Device memory free for the batch; None to ask CUDA (on the CPU, None gives 1, the fastest there).

    Returns
    -------
    Samples per batch, at least 1.
    """
    if free_bytes is None:
        if kdata.device.type != "cuda":
            return 1
        free_bytes, _ = torch.cuda.mem_get_info(kdata.device)
    n_phases, n_coils, ny, nx = kdata.shape
    bytes_per_sample = 4 * ny * nx * (_LIVE_ACTIVATIONS * network.hidden + 4 * 2 * n_phases * n_coils)
    return max(1, int(free_bytes * CUDA_FREE_FRACTION) // bytes_per_sample)


def mc_sample(
    network: UnrolledRecon,
    kdata: torch.Tensor,
    sampled: torch.Tensor,
    sens: torch.Tensor,
    *,
    n_samples: int = 100,
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    keep_samples: bool = False,
    seed: int | None = None,
) -> McEstimate:
    """Return the mean and SD of ``n_samples`` MC-dropout reconstructions of one slice.

    Stops between batches (``qmri_models.interrupt.check_interrupt``) when its caller asks.

    Parameters
    ----------
    network : The reconstruction network; its dropout is switched on for sampling and restored afterwards.
    kdata : Measured k-space, zero where not sampled. Shape `(phases, coils, ky, kx)` complex64.
    sampled : Sampled lines. Shape `(phases, ky)` bool.
    sens : Coil sensitivities. Shape `(coils, y, x)` complex64.
    n_samples : Samples T.
    batch_size : Samples per forward pass; None for ``samples_per_batch`` (memory-sized on CUDA, 1 on the CPU).
        1 runs the paper's T sequential passes.
    on_batch : Called with the number of samples done after every batch (progress).
    keep_samples : Also return every sample (memory: ``n_samples`` times the slice's images).
    seed : Seed of the dropout masks (a generator of the slice's own, on its device): the same seed gives the same
        samples bit for bit on the same device and thread count; None draws from torch's global generator.

    Returns
    -------
    Mean image and SD of every phase (the samples when kept; the predicted error SD when the network has a head).
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 for a standard deviation, got {n_samples}")
    per_batch = batch_size if batch_size is not None else samples_per_batch(network, kdata)
    if per_batch < 1:
        raise ValueError(f"batch_size must be at least 1, got {per_batch}")
    was_training, was_sampling = network.training, network.mc_dropout
    network.eval()
    network.mc_dropout = True
    if seed is not None:
        network.draw_dropout_from(torch.Generator(device=kdata.device).manual_seed(seed))
    moments = RunningMoments()
    kept: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            done = 0
            while done < n_samples:
                check_interrupt()
                b = min(per_batch, n_samples - done)
                images = network(
                    kdata.unsqueeze(0).expand(b, -1, -1, -1, -1),
                    sampled.unsqueeze(0).expand(b, -1, -1),
                    sens.unsqueeze(0).expand(b, -1, -1, -1),
                )
                moments.add(images)
                if keep_samples:
                    kept.append(images.clone())
                done += b
                if on_batch is not None:
                    on_batch(done)
    finally:
        network.train(was_training)
        network.mc_dropout = was_sampling
        network.draw_dropout_from(None)
    if moments.mean is None:
        raise ValueError("no samples were drawn")
    samples = torch.cat(kept) if keep_samples else None
    sd = moments.sd()
    error_sd = None
    if network.error_head is not None:
        with torch.inference_mode():
            zero_filled = sens_reduce(kdata[None], sens[None])
            error_sd = network.error_head(moments.mean[None], zero_filled, sd[None])[0]
    return McEstimate(mean=moments.mean, sd=sd, n_samples=moments.count, samples=samples, error_sd=error_sd)
