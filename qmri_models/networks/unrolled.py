"""Stage 1 of PUQ: the unrolled multi-phase reconstruction network with Monte Carlo dropout.

As the PUQ paper (Sun et al., Fig. 2A-B): ``n_iterations`` (5) steps, each a CNN denoiser with its own weights
followed by a data-consistency layer that puts the measured k-space back, using the coil sensitivities and the
sampling mask. Real and imaginary parts of all phases are stacked as channels; the denoiser has 64 hidden channels
and dropout in its three middle hidden layers. With ``mc_dropout`` on, dropout stays active at inference, so
repeated passes are samples of the posterior (Gal and Ghahramani); ``qmri_models.networks.mc_sampling`` runs them as
batches.

Shapes (batch first): k-space `(batch, phases, coils, ky, kx)` complex64, sampled lines `(batch, phases, ky)` bool,
coil sensitivities `(batch, coils, y, x)` complex64 with unit sum of squares, images `(batch, phases, y, x)`
complex64. The k-space grid is the image grid (readout oversampling removed).
"""

import torch
from torch import nn
from torch.nn import functional

from qmri_models.networks.error_head import ErrorHead


def centered_fft2(img: torch.Tensor) -> torch.Tensor:
    """Return the orthonormal, centred 2D FFT over the last two axes (``qmri_models.recon.cartesian``'s convention)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=dims), norm="ortho"), dim=dims)


def centered_ifft2(kdata: torch.Tensor) -> torch.Tensor:
    """Return the orthonormal, centred inverse 2D FFT over the last two axes."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(kdata, dim=dims), norm="ortho"), dim=dims)


def sens_expand(img: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Return the coil k-space of phase images. ``img`` `(b, p, y, x)`, ``sens`` `(b, c, y, x)`; `(b, p, c, y, x)`."""
    return centered_fft2(img[:, :, None] * sens[:, None])


def sens_reduce(kdata: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Return the coil-combined images of coil k-space. ``kdata`` `(b, p, c, y, x)`; returns `(b, p, y, x)`."""
    return (centered_ifft2(kdata) * sens[:, None].conj()).sum(dim=2)


class McDropout(nn.Dropout):
    """Dropout that also drops at inference while ``mc`` is set: the sampling of MC dropout.

    With a ``generator`` set, the masks are drawn from it instead of torch's global generator, so a seeded sampling
    run is reproducible whatever else runs in the process.
    """

    mc: bool = False
    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` with activations dropped (and the rest scaled) when training or sampling."""
        if self.generator is None or not self.mc or self.training:
            return functional.dropout(x, self.p, training=self.training or self.mc, inplace=False)
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)


class CnnDenoiser(nn.Module):
    """Five 3x3 convolutions with ReLU, dropout after the three middle ones, and a residual connection (Fig. 2B)."""

    def __init__(self, *, n_phases: int, hidden: int = 64, dropout: float = 0.3) -> None:
        """Build the denoiser.

        Parameters
        ----------
        n_phases : Phases; the network sees ``2 * n_phases`` channels (real and imaginary parts).
        hidden : Channels of the hidden layers.
        dropout : Drop probability of the three middle hidden layers, in [0, 1).
        """
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        channels = 2 * n_phases
        self.first = nn.Conv2d(channels, hidden, 3, padding=1)
        self.middle = nn.ModuleList(nn.Conv2d(hidden, hidden, 3, padding=1) for _ in range(3))
        self.dropouts = nn.ModuleList(McDropout(dropout) for _ in range(3))
        self.last = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Return the denoised images. ``img`` `(b, p, y, x)` complex; returns the same shape."""
        x = torch.cat([img.real, img.imag], dim=1)
        h = functional.relu(self.first(x))
        for conv, drop in zip(self.middle, self.dropouts, strict=True):
            h = drop(functional.relu(conv(h)))
        out = x + self.last(h)
        n = img.shape[1]
        return torch.complex(out[:, :n], out[:, n:])


class DataConsistency(nn.Module):
    """Put the measured k-space back: ``k <- k + w M (k0 - k)`` per coil, then combine with the sensitivities.

    ``w`` is learned in [0, 1] (a sigmoid of a parameter, starting near 1, the hard projection of [22] in the paper).
    """

    def __init__(self) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(4.0))

    def forward(
        self, img: torch.Tensor, kdata: torch.Tensor, sampled: torch.Tensor, sens: torch.Tensor
    ) -> torch.Tensor:
        """Return the images made consistent with the measured lines.

        Parameters
        ----------
        img : Current images. Shape `(b, p, y, x)` complex.
        kdata : Measured k-space, zero where not sampled. Shape `(b, p, c, ky, kx)` complex.
        sampled : Sampled lines. Shape `(b, p, ky)` bool.
        sens : Coil sensitivities. Shape `(b, c, y, x)` complex.

        Returns
        -------
        Images. Shape `(b, p, y, x)` complex.
        """
        estimate = sens_expand(img, sens)
        weight = torch.sigmoid(self.logit) * sampled[:, :, None, :, None].to(estimate.real.dtype)
        return sens_reduce(estimate + weight * (kdata - estimate), sens)


class UnrolledRecon(nn.Module):
    """The PUQ reconstruction: ``n_iterations`` of denoiser then data consistency, from the zero-filled images.

    An optional ``error_head`` (trained afterwards) is not part of the forward pass: MC sampling applies it to the
    samples' mean and SD.
    """

    def __init__(
        self,
        *,
        n_phases: int,
        n_iterations: int = 5,
        hidden: int = 64,
        dropout: float = 0.3,
        error_head_hidden: int | None = None,
    ) -> None:
        """Build the network.

        Parameters
        ----------
        n_phases : Phases of the scan (8 for the paper's MOLLI and T2-prep).
        n_iterations : Unrolled iterations, each with its own denoiser weights.
        hidden : Hidden channels of every denoiser.
        dropout : Drop probability of the denoisers' three middle layers.
        error_head_hidden : Hidden channels of an ``ErrorHead`` that MC sampling applies to its result; None: none.
        """
        super().__init__()
        if n_iterations < 1:
            raise ValueError(f"n_iterations must be at least 1, got {n_iterations}")
        self.n_phases = n_phases
        self.hidden = hidden
        self.denoisers = nn.ModuleList(
            CnnDenoiser(n_phases=n_phases, hidden=hidden, dropout=dropout) for _ in range(n_iterations)
        )
        self.consistency = nn.ModuleList(DataConsistency() for _ in range(n_iterations))
        self.error_head = None if error_head_hidden is None else ErrorHead(n_phases=n_phases, hidden=error_head_hidden)

    @property
    def mc_dropout(self) -> bool:
        """Whether dropout is active at inference (MC sampling)."""
        return any(m.mc for m in self.modules() if isinstance(m, McDropout))

    @mc_dropout.setter
    def mc_dropout(self, active: bool) -> None:
        for module in self.modules():
            if isinstance(module, McDropout):
                module.mc = active

    def draw_dropout_from(self, generator: torch.Generator | None) -> None:
        """Draw the MC-dropout masks from ``generator`` (None: torch's global generator)."""
        for module in self.modules():
            if isinstance(module, McDropout):
                module.generator = generator

    def forward(self, kdata: torch.Tensor, sampled: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        """Return the reconstructed images of every phase.

        Parameters
        ----------
        kdata : Measured k-space, zero where not sampled. Shape `(b, p, c, ky, kx)` complex.
        sampled : Sampled lines. Shape `(b, p, ky)` bool.
        sens : Coil sensitivities, unit sum of squares. Shape `(b, c, y, x)` complex.

        Returns
        -------
        Images. Shape `(b, p, y, x)` complex.
        """
        if kdata.ndim != 5 or kdata.shape[1] != self.n_phases:
            raise ValueError(f"kdata must be (batch, {self.n_phases} phases, coils, ky, kx), got {tuple(kdata.shape)}")
        if sampled.shape != kdata.shape[:2] + kdata.shape[3:4]:
            raise ValueError(f"sampled must be (batch, phases, ky) = {tuple(kdata.shape[:2] + kdata.shape[3:4])}")
        if sens.shape != kdata.shape[:1] + kdata.shape[2:]:
            raise ValueError(f"sens must be (batch, coils, y, x) = {tuple(kdata.shape[:1] + kdata.shape[2:])}")
        img = sens_reduce(kdata, sens)
        for denoise, consistent in zip(self.denoisers, self.consistency, strict=True):
            img = consistent(denoise(img), kdata, sampled, sens)
        return img
