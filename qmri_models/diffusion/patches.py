"""Patch-wise denoising: a denoiser trained on square patches applied to a larger image, overlaps averaged.

A U-Net with group normalisation and self-attention sees its whole input at once, so a network trained on 64 px
patches does not give the same answer on a 160 px slice (the qMRI Diffusor trained on 64 px crops read a 1884 ms
sphere as 7248 ms on the whole slice and 2015 ms patch by patch). Cutting every denoising step's input into the
training patch size, with a stride, and averaging the overlapping predictions (MRF-IDDPM's patch-wise sampling, seed
paper 003) keeps inference where training was.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""A network called as ``ConditionalDenoiser`` is: (noisy, condition, steps) to its prediction."""


@dataclass(frozen=True)
class PatchGrid:
    """Square patches of side ``size`` every ``stride`` pixels; the last patch of a row or column ends at the edge."""

    size: int
    """Patch side in pixels: the size the denoiser was trained on (a multiple of its downsampling)."""
    stride: int
    """Pixels between neighbouring patches (at most ``size``: the patches cover the image)."""

    def __post_init__(self) -> None:
        if self.size < 1 or not 1 <= self.stride <= self.size:
            raise ValueError(f"a patch grid needs size >= 1 and 1 <= stride <= size, got {self.size}, {self.stride}")

    def starts(self, length: int) -> list[int]:
        """Return the first pixel of every patch along a side of ``length`` pixels (one patch when it fits)."""
        if length <= self.size:
            return [0]
        starts = list(range(0, length - self.size + 1, self.stride))
        return starts if starts[-1] == length - self.size else [*starts, length - self.size]

    def count(self, y: int, x: int) -> int:
        """Return how many patches cover a `(y, x)` image."""
        return len(self.starts(y)) * len(self.starts(x))


def predict(
    denoiser: Denoiser,
    noisy: torch.Tensor,
    condition: torch.Tensor,
    step: int,
    grid: PatchGrid | None,
) -> torch.Tensor:
    """Return the denoiser's prediction for a batch, whole or by ``grid``'s patches with overlaps averaged.

    Parameters
    ----------
    denoiser : The network (a ``ConditionalDenoiser``).
    noisy : ``x_t``. Shape `(batch, target_channels, y, x)`.
    condition : Shape `(batch, condition_channels, y, x)`.
    step : The step t of every sample.
    grid : Patches to cut the images into (None, or patches as large as the image: the whole image at once).

    Returns
    -------
    The prediction (noise, velocity or sample, as the denoiser was trained). Shape of ``noisy``.
    """
    batch, _, y, x = noisy.shape
    if grid is None or grid.count(y, x) == 1:
        return denoiser(noisy, condition, torch.full((batch,), step, device=noisy.device, dtype=torch.long))
    windows = [
        (slice(top, top + grid.size), slice(left, left + grid.size))
        for top in grid.starts(y)
        for left in grid.starts(x)
    ]
    patches = denoiser(
        torch.cat([noisy[..., rows, cols] for rows, cols in windows]),
        torch.cat([condition[..., rows, cols] for rows, cols in windows]),
        torch.full((batch * len(windows),), step, device=noisy.device, dtype=torch.long),
    )
    total = torch.zeros_like(noisy)
    covered = torch.zeros((y, x), dtype=noisy.dtype, device=noisy.device)
    for (rows, cols), patch in zip(windows, patches.split(batch), strict=True):
        total[..., rows, cols] += patch
        covered[rows, cols] += 1
    return total / covered
