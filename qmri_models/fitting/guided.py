"""PUQ stage 2: maps from the MC mean images, guided by the per-phase uncertainty, with the spread over samples.

Two fits, as the PUQ paper and the model-based alternative:

- ``model_based``: the weighted Levenberg-Marquardt fit of the signal model, each phase of each pixel weighted by
  ``1 / sd^2``. The SD is floored at ``SD_FLOOR`` of the pixel's largest signal, so a phase the network is
  (over-)confident about cannot take all the weight.
- ``learned``: the pixelwise MLP (``qmri_models.networks.fit_mlp``). The model-based fit of the same mean images
  is made too and kept (``SliceMaps.model_fit``): the MLP knows only what it was trained on, and where its map and
  the signal model's disagree the learned answer is doubtful. With ``with_disagreement`` (the default) the map SD
  is ``sqrt(spread^2 + (learned - model_based)^2)`` (``sd_kind`` ``mc_sd_disagreement``), so it grows there.

Unguided (the ablation): equal weights, or the MLP trained with its uncertainty inputs zero.

The map SD is not the fitter's: every MC sample is fitted the same way (all samples of the slice in one batched
fit) and the SD of the map over the samples is reported, so it carries the reconstruction's uncertainty into the
map. Each sample's map is clamped into its plausible range first (``plausibility.bounded``: a sample fitted to
10^8 ms counts at the maximum), then the maps of the mean go through ``plausibility.plausible_maps``. The clamped
maps of every sample of the primary map (T1, T2) stay in ``SliceMaps.samples``, so what is measured on the map (a
structure's mean) can be measured on every sample too; the plausibility step rejects pixels of the mean's maps and
leaves the samples as they are.
"""

import dataclasses
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from qmri_models.fitting.maps import (
    MASK_THRESHOLD,
    MIN_ISLAND_PIXELS,
    SliceMaps,
    fit_maps,
    fit_mask,
    map_units,
)
from qmri_models.fitting.plausibility import PLAUSIBLE_MAXIMA, bounded, plausible_maps
from qmri_models.networks.fit_mlp import FitMlp
from qmri_models.signal_models import SignalModel

FitKind = Literal["model_based", "learned"]
SD_FLOOR = 0.01
"""Smallest per-phase SD used in the weights, as a fraction of the pixel's largest signal magnitude."""
SAMPLE_SPREAD = "SD over the MC reconstructions"
"""How the map SD is made here (``SliceMaps.sd_method``)."""
SPREAD_AND_DISAGREEMENT = "SD over the MC reconstructions combined with the learned fit's distance to the model fit"
"""How the learned fit's map SD is made with ``with_disagreement`` (``SliceMaps.sd_method``)."""


def phase_weights(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Return the model-based weights ``1 / max(sd, SD_FLOOR * max|mean|)^2`` of every phase and pixel.

    Parameters
    ----------
    mean : Mean images. Shape `(phases, y, x)`.
    sd : Per-phase SD. Shape `(phases, y, x)`.

    Returns
    -------
    Weights. Shape `(phases, y, x)` float64.
    """
    floor = SD_FLOOR * np.abs(mean).max(axis=0, keepdims=True)
    return 1.0 / np.maximum(np.maximum(sd, floor), np.finfo(np.float32).tiny).astype(np.float64) ** 2


def fit_guided_maps(
    model: SignalModel,
    mean: np.ndarray,
    sd: np.ndarray,
    samples: np.ndarray,
    times_ms: np.ndarray,
    *,
    fit: FitKind = "model_based",
    guided: bool = True,
    mlp: FitMlp | None = None,
    mask_threshold: float = MASK_THRESHOLD,
    min_island_pixels: int = MIN_ISLAND_PIXELS,
    maxima: Mapping[str, float] = PLAUSIBLE_MAXIMA,
    device: str | torch.device = "cpu",
    max_iterations: int = 100,
    with_disagreement: bool = True,
) -> SliceMaps:
    """Return the maps of one slice from its MC reconstruction, with the map SD over the samples.

    Parameters
    ----------
    model : Signal model (the model-based fit's; for the learned fit it names the map and its unit).
    mean : MC mean images. Shape `(phases, y, x)` complex.
    sd : Per-phase uncertainty (``McEstimate.uncertainty``). Shape `(phases, y, x)` float.
    samples : The MC samples. Shape `(T, phases, y, x)` complex, T >= 2.
    times_ms : Preparation time of every phase in ms. Shape `(phases,)`.
    fit : ``model_based`` or ``learned``.
    guided : Use the uncertainty (False: the unguided ablation).
    mlp : The learned fit's network (its ``guided`` must match ``guided``); required for ``learned``.
    mask_threshold : Background threshold of ``signal_mask``.
    min_island_pixels : Smallest island of the mask kept, in pixels (8-connected).
    maxima : Largest plausible value of every checked map in its unit (``plausible_maps``).
    device : Where to fit.
    max_iterations : Most Levenberg-Marquardt iterations (the model-based fit, also made beside the learned one).
    with_disagreement : Learned fit: combine the spread over samples with the learned map's distance to the
        model-based fit (module docstring); False: the spread alone.

    Returns
    -------
    Maps of the mean images, implausible pixels rejected; SDs over the samples (``sd_method`` and ``sd_kind`` say
    how); the primary map of every sample, clamped into its plausible range, in ``samples`` (their SD over samples is
    the ``mc_sd`` SD map at every pixel not rejected); for the learned fit the model-based map in ``model_fit``.
    """
    if samples.ndim != 4 or samples.shape[1:] != mean.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be (T >= 2, {', '.join(map(str, mean.shape))}), got {samples.shape}")
    if sd.shape != mean.shape:
        raise ValueError(f"sd must have the mean's shape {mean.shape}, got {sd.shape}")
    mask = fit_mask(mean, mask_threshold, min_island_pixels)
    if fit == "learned":
        if mlp is None:
            raise ValueError("the learned fit needs its MLP (mlp=...)")
        if mlp.map_name != model.primary_map.lower():
            raise ValueError(f"the MLP fits {mlp.map_name.upper()}, the {model.name} model {model.primary_map}")
        if mlp.guided != guided:
            raise ValueError(f"the MLP was trained {'with' if mlp.guided else 'without'} guidance; guided={guided}")
    elif fit != "model_based":
        raise ValueError(f"fit must be model_based or learned, got {fit!r}")
    weights = phase_weights(mean, sd) if guided else None
    at_mean = fit_maps(model, mean, times_ms, mask=mask, weights=weights, device=device, max_iterations=max_iterations)
    if mlp is not None and fit == "learned":
        name = model.primary_map
        model_fit = _sample_maps(at_mean.values[name][None], maxima.get(name))[0]
        learned = _learned(model, mlp, mean, sd, samples, mask, maxima, device)
        if with_disagreement:
            learned = _with_disagreement(learned, model_fit, name)
        return plausible_maps(dataclasses.replace(learned, model_fit={name: model_fit}), maxima)
    n_samples, n_phases, ny, nx = samples.shape
    side_by_side = np.moveaxis(samples, 0, 2).reshape(n_phases, ny, n_samples * nx)
    tiled_weights = None if weights is None else np.tile(weights, (1, 1, n_samples))
    per_sample = fit_maps(
        model,
        side_by_side,
        times_ms,
        mask=np.tile(mask, (1, n_samples)),
        weights=tiled_weights,
        device=device,
        max_iterations=max_iterations,
    )
    sample_maps = {
        name: _sample_maps(np.moveaxis(values.reshape(ny, n_samples, nx), 1, 0), maxima.get(name))
        for name, values in per_sample.values.items()
    }
    guided_maps = SliceMaps(
        values=at_mean.values,
        sds={name: _spread(maps, mask) for name, maps in sample_maps.items()},
        units=at_mean.units,
        mask=mask,
        converged=at_mean.converged,
        sd_method=SAMPLE_SPREAD,
        samples={model.primary_map: sample_maps[model.primary_map]},
        sd_kind="mc_sd",
    )
    return plausible_maps(guided_maps, maxima)


def learned_map(
    mlp: FitMlp, images: np.ndarray, sd: np.ndarray, mask: np.ndarray, *, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Return the MLP's map (ms) of a slice's images, zero outside the mask.

    Parameters
    ----------
    mlp : The learned fit (guided or not; an unguided one ignores ``sd``).
    images : Phase images. Shape `(phases, y, x)` (the magnitude is used).
    sd : Per-phase uncertainty. Shape `(phases, y, x)`.
    mask : Pixels to fit. Shape `(y, x)` bool.
    device : Where the MLP runs.

    Returns
    -------
    T1 or T2 in ms. Shape `(y, x)` float32.
    """
    n_phases = images.shape[0]
    pixels = np.flatnonzero(mask.ravel())
    mlp = mlp.to(device).eval()
    with torch.inference_mode():
        values = mlp.predict_ms(
            _pixels_of(np.abs(images), pixels, n_phases, device), _pixels_of(sd, pixels, n_phases, device)
        )
    out = np.zeros(mask.shape, np.float32)
    out.ravel()[pixels] = values.cpu().numpy()
    return out


def _learned(
    model: SignalModel,
    mlp: FitMlp,
    mean: np.ndarray,
    sd: np.ndarray,
    samples: np.ndarray,
    mask: np.ndarray,
    maxima: Mapping[str, float],
    device: str | torch.device,
) -> SliceMaps:
    """Return the MLP's map of the mean images, its SD over the samples' maps and the samples' maps."""
    name = model.primary_map
    per_sample = _sample_maps(
        np.stack([learned_map(mlp, sample, sd, mask, device=device) for sample in samples]), maxima.get(name)
    )
    return SliceMaps(
        values={name: learned_map(mlp, mean, sd, mask, device=device)},
        sds={name: _spread(per_sample, mask)},
        units={name: map_units(model)[name]},
        mask=mask,
        converged=mask.copy(),
        sd_method=SAMPLE_SPREAD,
        samples={name: per_sample},
        sd_kind="mc_sd",
    )


def _with_disagreement(maps: SliceMaps, model_fit: np.ndarray, name: str) -> SliceMaps:
    """Return the learned maps with the SD of ``name`` combined with its distance to ``model_fit`` `(y, x)`."""
    distance = np.where(maps.mask, maps.values[name] - model_fit, 0.0)
    combined = np.hypot(maps.sds[name], distance).astype(np.float32)
    return dataclasses.replace(
        maps, sds={**maps.sds, name: combined}, sd_method=SPREAD_AND_DISAGREEMENT, sd_kind="mc_sd_disagreement"
    )


def _sample_maps(per_sample: np.ndarray, maximum: float | None) -> np.ndarray:
    """Return every sample's map of the slice, clamped into [0, maximum] when a maximum is given.

    ``per_sample`` has shape `(samples, y, x)`; the result is a new C-contiguous float32 array of that shape.
    """
    values = per_sample if maximum is None else bounded(per_sample, maximum)
    return np.ascontiguousarray(values, dtype=np.float32)


def _spread(sample_maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return the SD over the samples of `(samples, y, x)` maps: `(y, x)` float32, zero outside ``mask``."""
    return np.where(mask, sample_maps.std(axis=0), 0.0).astype(np.float32)


def _pixels_of(values: np.ndarray, pixels: np.ndarray, n_phases: int, device: str | torch.device) -> torch.Tensor:
    """Return the chosen pixels of `(phases, y, x)` values as a `(pixels, phases)` float32 tensor."""
    return torch.as_tensor(values.reshape(n_phases, -1)[:, pixels].T, dtype=torch.float32, device=device)
