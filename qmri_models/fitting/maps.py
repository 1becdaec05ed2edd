"""Whole-slice parametric maps: mask the background, restore polarity, fit every pixel, report maps with SD."""

from dataclasses import dataclass, field

import numpy as np
import torch

from qmri_models.fitting.levenberg_marquardt import FitResult, fit_pixels
from qmri_models.signal_models import SignalModel

CHUNK_PIXELS = 6144
"""Pixels fitted together. Each Levenberg-Marquardt step streams a few `(pixels, phases, params)` temporaries, so
chunks that stay in the CPU caches are faster overall: 6144 (12288 with MOLLI's two polarity candidates) fitted a
160^2 MOLLI slice in 39 ms against 65 ms in one piece (bench/bench_fitting.py's slice, 2 cores)."""


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
    mask_threshold: float = 0.08,
    device: str | torch.device = "cpu",
    max_iterations: int = 100,
) -> SliceMaps:
    """Return the maps of one slice fitted pixel by pixel (all pixels at once, in chunks).

    Signed models (MOLLI, inversion recovery) are fitted to the magnitude with its polarity restored: the phases
    before the null point (the smallest magnitude) are negated, with and without the null phase itself, and the
    better of the two fits is kept, as in Gadgetron's and Barral et al.'s polarity restoration.

    Parameters
    ----------
    model : Signal model.
    images : Phase images (complex or magnitude; the magnitude is fitted). Shape `(phases, y, x)`.
    times_ms : Preparation time of every phase in ms. Shape `(phases,)`.
    mask : Pixels to fit, shape `(y, x)` bool; None to fit where ``signal_mask(images, mask_threshold)``.
    weights : Weight of every phase and pixel, shape `(phases, y, x)`, or of every phase, shape `(phases,)`;
        None for equal weights.
    absolute_weights : The weights are inverse noise variances (SD from them, not from the residual).
    mask_threshold : Background threshold when ``mask`` is None.
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
        mask = signal_mask(images, mask_threshold)
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
    """Return a `(y, x)` float32 image holding the fitted pixels' values inside ``mask`` and zero outside."""
    out = np.zeros(mask.shape, dtype=np.float32)
    if parts:
        out[mask] = np.concatenate(parts)
    return out


def _empty(model: SignalModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Return zero-pixel parameters and covariance, to learn a model's map names when no pixel is fitted."""
    n = len(model.parameters)
    return torch.zeros((0, n), dtype=torch.float64), torch.zeros((0, n, n), dtype=torch.float64)
