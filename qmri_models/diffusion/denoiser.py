"""The conditional denoiser: MONAI's diffusion U-Net with the condition concatenated to the noisy sample."""

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn


@dataclass(frozen=True)
class DenoiserConfig:
    """The U-Net's size. The defaults are the qMRI Diffusor paper's three levels of 128, 256 and 256 channels."""

    target_channels: int
    """Channels of the generated sample (3 for T1, PD and B)."""
    condition_channels: int
    """Channels of the condition (7 inversion-recovery images)."""
    channels: tuple[int, ...] = (128, 256, 256)
    """Feature channels of each U-Net level (each a multiple of ``norm_groups``)."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Which levels add self-attention (one per level)."""
    res_blocks: int = 2
    """Residual blocks per level."""
    norm_groups: int = 32
    """Groups of the group normalisations."""
    head_channels: int = 32
    """Channels per attention head."""

    def __post_init__(self) -> None:
        if self.target_channels < 1 or self.condition_channels < 1:
            raise ValueError("target_channels and condition_channels must be at least 1")
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(f"attention_levels needs one entry per level ({len(self.channels)})")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"every level's channels must be a multiple of norm_groups {self.norm_groups}")

    @property
    def downsampling(self) -> int:
        """Return the factor the U-Net halves an image by: an image side must be a multiple of it."""
        return 2 ** (len(self.channels) - 1)


class ConditionalDenoiser(nn.Module):
    """Predict the noise in a noisy sample ``x_t`` at step ``t`` given a condition image of the same size.

    The condition is concatenated to ``x_t`` in the channel dimension (as the qMRI Diffusor and MRF-IDDPM do), and
    the U-Net embeds the step.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=config.target_channels + config.condition_channels,
            out_channels=config.target_channels,
            channels=config.channels,
            attention_levels=config.attention_levels,
            num_res_blocks=config.res_blocks,
            norm_num_groups=config.norm_groups,
            num_head_channels=config.head_channels,
        )

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Return the predicted noise.

        Parameters
        ----------
        noisy : ``x_t``. Shape `(batch, target_channels, y, x)`, y and x multiples of ``config.downsampling``.
        condition : Shape `(batch, condition_channels, y, x)`.
        steps : Step t of each sample. Shape `(batch,)` long.

        Returns
        -------
        Predicted noise. Shape of ``noisy``.
        """
        self._check(noisy, condition)
        return self.unet(torch.cat([noisy, condition], dim=1), timesteps=steps)

    def _check(self, noisy: torch.Tensor, condition: torch.Tensor) -> None:
        """Raise ValueError naming what is wrong when the inputs do not fit the network."""
        c = self.config
        if noisy.ndim != 4 or noisy.shape[1] != c.target_channels:
            raise ValueError(f"noisy must be (batch, {c.target_channels}, y, x), got {tuple(noisy.shape)}")
        expected = (noisy.shape[0], c.condition_channels, *noisy.shape[2:])
        if tuple(condition.shape) != expected:
            raise ValueError(f"condition must be {expected}, got {tuple(condition.shape)}")
        if any(side % c.downsampling for side in noisy.shape[2:]):
            raise ValueError(f"image sides must be multiples of {c.downsampling}, got {tuple(noisy.shape[2:])}")

    def state(self) -> dict[str, Any]:
        """Return what ``from_state`` rebuilds the network from (its configuration and weights)."""
        return {"config": dataclasses.asdict(self.config), "state_dict": self.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ConditionalDenoiser":
        """Return the network ``state()`` saved, in eval mode on the CPU."""
        config = dict(state["config"])
        for name in ("channels", "attention_levels"):
            config[name] = tuple(config[name])
        network = cls(DenoiserConfig(**config))
        network.load_state_dict(state["state_dict"])
        return network.eval()
