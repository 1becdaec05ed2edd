"""Whole-slice parametric maps: mask the background, restore polarity, fit every pixel, report maps with SD."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from skimage.measure import label

from qmri_models.fitting.levenberg_marquardt import FitResult, fit_pixels
from qmri_models.signal_models import SignalModel

CHUNK_PIXELS = 6144
"""Pixels fitted together. Each Levenberg-Marquardt step streams a few `(pixels, phases, params)` temporaries, so
chunks that stay in the CPU caches are faster overall: 6144 (12288 with MOLLI's two polarity candidates) fitted a
160^2 MOLLI slice in 39 ms against 65 ms in one piece (bench/bench_fitting.py's slice, 2 cores)."""
MASK_THRESHOLD = 0.08
"""Default background threshold of the fit mask, as a fraction of the bright-pixel level (``signal_mask``)."""
MIN_ISLAND_PIXELS = 20
"""Default smallest island (8-connected pixels) the fit mask keeps (``remove_islands``). Picked from the masks of
simulated CG-SENSE brain slices (64^2 R1 and R4, 160^2 R4, 256^2 R4): the noise islands had 1 to 10 pixels (one of
52), the smallest tissue island 269 pixels (at 64^2); 20 pixels is 7 mm across at 160^2 (220 mm field of view)."""

SdKind = Literal["fit_sd", "mc_sd", "mc_sd_disagreement", "diffusion_sd"]
"""What a map's SD is: ``fit_sd`` the least-squares fit's (from its residual); ``mc_sd`` the spread of the maps of
the MC samples; ``mc_sd_disagreement`` that spread combined with how far the learned map lies from the model-based
fit of the same images, ``sqrt(mc_sd^2 + (learned - model_based)^2)``, so it grows where the learned fit is doubtful;
``diffusion_sd`` the spread of the maps a diffusion model generated for the same images."""
SD_KINDS: tuple[SdKind, ...] = get_args(SdKind)


@dataclass(frozen=True)
class SliceMaps:
    """The maps of one slice; zero outside the mask."""

    values: dict[str, np.ndarray] = field(repr=False)
    """Map name (``T1``, ``T2``, ``PD`` ...) to its values. Each shape `(y, x)` float32, unit in ``units``."""
    sds: dict[str, np.ndarray] = field(repr=False)
    """Map name to the standard deviation from the fit. Each shape `(y, x)` float32."""
    units: dict[str, str]
    """Map name to its unit (``ms`` for relaxation times)."""
    mask: np.ndarray = field(repr=False)
    """Pixels that were fitted. Shape `(y, x)` bool."""
    converged: np.ndarray = field(repr=False)
    """Fitted pixels whose fit converged. Shape `(y, x)` bool."""
    sd_method: str = "from the fit residual"
    """How the SDs were made, for people (image comments)."""
    rejected: np.ndarray | None = field(default=None, repr=False)
    """Why each fitted pixel was rejected as implausible: ``Rejection`` flags of
    ``qmri_models.fitting.plausibility`` (0: kept). Shape `(y, x)` uint8; None before the plausibility step."""
    maxima: Mapping[str, float] = field(default_factory=dict)
    """Plausible maximum of every checked map in its unit (``T1``, ``T2`` in ms); empty before the plausibility step."""
    samples: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Map name to its map of every sample of the reconstruction (MC dropout), the maps whose SD is the spread over
    them: each shape `(samples, y, x)` float32, unit in ``units``, zero outside the mask. Empty for a single fit."""
    sd_kind: SdKind = "fit_sd"
    """What the SDs are (``SdKind``): what a calibrated interval that scales them must have been calibrated on."""
    model_fit: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    """When a map is learned: map name to the model-based (weighted least-squares) fit of the same images, shape
    `(y, x)` float32 in the map's unit, clamped into its plausible range, zero outside the mask. Empty otherwise."""

    @property
    def kept(self) -> np.ndarray:
        """Fitted pixels not rejected as implausible. Shape `(y, x)` bool."""
        return self.mask if self.rejected is None else self.mask & (self.rejected == 0)


def signal_mask(images: np.ndarray, threshold: float) -> np.ndarray:
    """Return the pixels with signal: brightest phase above ``threshold`` times the 99th percentile of that.

    Parameters
    ----------
    images : Phase images. Shape `(phases, y, x)`.
    threshold : Fraction of the bright-pixel level below which a pixel is background, in [0, 1).

    Returns
    -------
    Mask. Shape `(y, x)` bool.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"mask threshold must be in [0, 1), got {threshold}")
    brightest = np.abs(images).max(axis=0)
    return brightest > threshold * np.percentile(brightest, 99)


def remove_islands(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Return the mask without its islands (8-connected regions) of fewer than ``min_pixels`` pixels.

    Parameters
    ----------
    mask : Pixels with signal. Shape `(y, x)` bool.
    min_pixels : Smallest island kept, in pixels, >= 1 (1 keeps every island).

    Returns
    -------
    Mask. Shape `(y, x)` bool.
    """
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
    islands = label(mask, connectivity=2)
    big_enough = np.bincount(islands.ravel(), minlength=1) >= min_pixels
    big_enough[0] = False  # the background
    return big_enough[islands]


def fit_mask(images: np.ndarray, threshold: float, min_island_pixels: int) -> np.ndarray:
    """Return the pixels to fit: ``signal_mask`` without its islands smaller than ``min_island_pixels``.

    Parameters
    ----------
    images : Phase images. Shape `(phases, y, x)`.
    threshold : Fraction of the bright-pixel level below which a pixel is background, in [0, 1).
    min_island_pixels : Smallest island kept, in pixels (8-connected), >= 1.

    Returns
    -------
    Mask. Shape `(y, x)` bool.
    """
    return remove_islands(signal_mask(images, threshold), min_island_pixels)


def map_units(model: SignalModel) -> dict[str, str]:
    """Return the unit of every map the model reports (``{"T1": "ms", "A": "a.u.", ...}``)."""
    return {name: output.unit for name, output in model.maps(*_empty(model)).items()}


def fit_maps(
    model: SignalModel,
    images: np.ndarray,
    times_ms: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    absolute_weights: bool = False,
    mask_threshold: float = MASK_THRESHOLD,
    min_island_pixels: int = MIN_ISLAND_PIXELS,
    device: str | torch.device = "cpu",
    max_iterations: int = 100,
) -> SliceMaps:
    """Return the maps of one slice fitted pixel by pixel (all pixels at once, in chunks).

    Signed models (MOLLI, inversion recovery) are fitted to the magnitude with its polarity restored: the phases
    before the null point (the smallest magnitude) are negated, with and without the null phase itself, and the
    better of the two fits is kept, as in Gadgetron's and Barral et al.'s polarity restoration.

    The maps are the fit's as it ended: ``qmri_models.fitting.plausibility.plausible_maps`` sets implausible pixels
    to zero and marks their SD.

    Parameters
    ----------
    model : Signal model.
    images : Phase images (complex or magnitude; the magnitude is fitted). Shape `(phases, y, x)`.
    times_ms : Preparation time of every phase in ms. Shape `(phases,)`.
    mask : Pixels to fit, shape `(y, x)` bool; None to fit ``fit_mask(images, mask_threshold, min_island_pixels)``.
    weights : Weight of every phase and pixel, shape `(phases, y, x)`, or of every phase, shape `(phases,)`;
        None for equal weights.
    absolute_weights : The weights are inverse noise variances (SD from them, not from the residual).
    mask_threshold : Background threshold when ``mask`` is None.
    min_island_pixels : Smallest island of the mask kept when ``mask`` is None, in pixels (8-connected).
    device : Where to fit (``cpu``, ``cuda``).
    max_iterations : Most Levenberg-Marquardt iterations.

    Returns
    -------
    Maps and SD maps named by the model, the mask and where the fit converged.
    """
    if images.ndim != 3:
        raise ValueError(f"images must be (phases, y, x), got shape {images.shape}")
    n_phases, ny, nx = images.shape
    times = np.asarray(times_ms, dtype=np.float64)
    if times.shape != (n_phases,):
        raise ValueError(f"need one preparation time per phase ({n_phases}), got {times.shape}")
    if mask is None:
        mask = fit_mask(images, mask_threshold, min_island_pixels)
    elif mask.shape != (ny, nx):
        raise ValueError(f"mask must have shape {(ny, nx)}, got {mask.shape}")
    magnitude = np.abs(images).reshape(n_phases, -1)[:, mask.ravel()].T
    pixel_weights = _pixel_weights(weights, mask, n_phases)
    device = torch.device(device)
    times_t = torch.as_tensor(times, dtype=torch.float64, device=device)
    units = map_units(model)
    values: dict[str, list[np.ndarray]] = {name: [] for name in units}
    sds: dict[str, list[np.ndarray]] = {name: [] for name in units}
    converged = []
    for begin in range(0, magnitude.shape[0], CHUNK_PIXELS):
        data = torch.as_tensor(magnitude[begin : begin + CHUNK_PIXELS], dtype=torch.float64, device=device)
        w = None if pixel_weights is None else _chunk(pixel_weights, begin, device)
        fit = _fit(model, data, times_t, w, absolute_weights=absolute_weights, max_iterations=max_iterations)
        for name, output in model.maps(fit.params, fit.covariance).items():
            values[name].append(output.value.cpu().numpy())
            sds[name].append(output.sd.cpu().numpy())
        converged.append(fit.converged.cpu().numpy())
    return SliceMaps(
        values={name: _scatter(parts, mask) for name, parts in values.items()},
        sds={name: _scatter(parts, mask) for name, parts in sds.items()},
        units=units,
        mask=mask,
        converged=_scatter(converged, mask).astype(bool),
    )


def _fit(
    model: SignalModel,
    magnitude: torch.Tensor,
    times_ms: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    absolute_weights: bool,
    max_iterations: int,
) -> FitResult:
    """Return the fit of magnitude data; for signed models, the better of the two polarity restorations."""
    if not model.signed:
        return fit_pixels(
            model,
            magnitude,
            times_ms,
            weights=weights,
            absolute_weights=absolute_weights,
            max_iterations=max_iterations,
        )
    order = torch.argsort(times_ms)
    null = torch.argmin(magnitude[:, order], dim=1)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    candidates = [
        torch.where(rank[None, :] < null[:, None] + include_null, -magnitude, magnitude) for include_null in (0, 1)
    ]
    n = magnitude.shape[0]
    both = fit_pixels(
        model,
        torch.cat(candidates),
        times_ms,
        weights=None if weights is None else torch.cat([weights, weights]),
        absolute_weights=absolute_weights,
        max_iterations=max_iterations,
    )
    second_better = both.residual_sd[n:] < both.residual_sd[:n]

    def pick(tensor: torch.Tensor) -> torch.Tensor:
        shape = (n,) + (1,) * (tensor.ndim - 1)
        return torch.where(second_better.reshape(shape), tensor[n:], tensor[:n])

    return FitResult(
        params=pick(both.params),
        covariance=pick(both.covariance),
        residual_sd=pick(both.residual_sd),
        converged=pick(both.converged),
        iterations=both.iterations,
    )


def _pixel_weights(weights: np.ndarray | None, mask: np.ndarray, n_phases: int) -> np.ndarray | None:
    """Return the weights of the masked pixels, shape `(pixels, phases)` or `(phases,)`, or None."""
    if weights is None:
        return None
    if weights.shape == (n_phases,):
        return np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_phases, *mask.shape):
        raise ValueError(f"weights must have shape {(n_phases, *mask.shape)} or {(n_phases,)}, got {weights.shape}")
    return weights.reshape(n_phases, -1)[:, mask.ravel()].T.astype(np.float64)


def _chunk(weights: np.ndarray, begin: int, device: torch.device) -> torch.Tensor:
    """Return the weights of one chunk of pixels (shared phase weights whole)."""
    part = weights if weights.ndim == 1 else weights[begin : begin + CHUNK_PIXELS]
    return torch.as_tensor(part, dtype=torch.float64, device=device)


def _scatter(parts: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Return a `(y, x)` float32 image holding the fitted pixels' values inside ``mask`` and zero outside.

    A value beyond float32's range (the SD of a degenerate fit) becomes infinite, which ``plausible_maps`` rejects.
    """
    out = np.zeros(mask.shape, dtype=np.float32)
    if parts:
        with np.errstate(over="ignore"):
            out[mask] = np.concatenate(parts)
    return out


def _empty(model: SignalModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Return zero-pixel parameters and covariance, to learn a model's map names when no pixel is fitted."""
    n = len(model.parameters)
    return torch.zeros((0, n), dtype=torch.float64), torch.zeros((0, n, n), dtype=torch.float64)
