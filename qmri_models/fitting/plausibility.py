"""Plausibility of fitted maps: implausible pixels set to zero, their SD marked, and why kept per pixel.

A fit ends somewhere for every pixel, also where the data hold no relaxation curve (noise, aliasing, flow): there
T1 or T2 can come out negative, at 10^8 ms, or not finite, and one such pixel spoils every window. As Gadgetron's
mapping gadgets clamp at a largest T1 or T2, a fitted pixel is rejected when

- a checked map (one with a plausible maximum: ``T1``, ``T2``) is zero or negative, or above its maximum;
- any of its maps or SDs is not finite;
- its fit did not converge;
- a checked map's SD is above the maximum: the fit cannot place the value inside the plausible range.

A rejected pixel is 0 in every map. Its SD is *marked*: set to the checked quantity's maximum, so the SD map shows it
as uncertain as the whole plausible range and never as certain (maps without a plausible range, such as amplitudes
in a.u. or MOLLI's T1*, have SD 0 there, for want of a scale). The SDs of the checked maps are clamped to
[0, maximum]. ``SliceMaps.rejected`` keeps why each pixel was rejected.
"""

import dataclasses
import enum
import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from qmri_models.fitting.maps import SliceMaps

MAX_T1_MS = 5000.0
"""Default largest plausible T1 in ms: above CSF's (about 4400 ms at 3 T), as Gadgetron's mapping gadgets' limits."""
MAX_T2_MS = 2500.0
"""Default largest plausible T2 in ms: above CSF's (about 2000 ms)."""
PLAUSIBLE_MAXIMA: Mapping[str, float] = MappingProxyType({"T1": MAX_T1_MS, "T2": MAX_T2_MS})
"""Default largest plausible value of every checked map, in its unit (ms); maps not named here are not checked."""


class Rejection(enum.IntFlag):
    """Why a fitted pixel was rejected; a pixel may have several reasons (``SliceMaps.rejected`` holds the flags)."""

    NOT_POSITIVE = 1
    """A checked map is zero or negative."""
    ABOVE_MAXIMUM = 2
    """A checked map is above its plausible maximum."""
    NOT_FINITE = 4
    """A map or SD is infinite or not a number."""
    NOT_CONVERGED = 8
    """The fit stopped at its iteration limit."""
    UNCERTAIN = 16
    """A checked map's SD is above its plausible maximum."""


REASONS: Mapping[Rejection, str] = MappingProxyType(
    {
        Rejection.NOT_POSITIVE: "zero or negative",
        Rejection.ABOVE_MAXIMUM: "above the maximum",
        Rejection.NOT_FINITE: "not finite",
        Rejection.NOT_CONVERGED: "not converged",
        Rejection.UNCERTAIN: "SD above the maximum",
    }
)
"""Every reason in words, for logs and image comments."""


def plausible_maps(maps: SliceMaps, maxima: Mapping[str, float] = PLAUSIBLE_MAXIMA) -> SliceMaps:
    """Return the maps with implausible pixels set to zero and their SD marked (module docstring).

    Parameters
    ----------
    maps : A slice's fitted maps (``fit_maps``), zero outside the mask.
    maxima : Largest plausible value of every checked map in its unit (``{"T1": 5000.0}`` in ms); a name the maps
        do not have is ignored.

    Returns
    -------
    The maps with ``rejected`` (why, per pixel) and ``maxima`` (of the checked maps) set.

    Raises
    ------
    ValueError
        If a maximum is not a positive finite number.
    """
    for name, maximum in maxima.items():
        if not (math.isfinite(maximum) and maximum > 0):
            raise ValueError(f"the plausible maximum of {name} must be positive and finite, got {maximum}")
    checked = {name: float(maximum) for name, maximum in maxima.items() if name in maps.values}
    fitted = maps.mask
    why = np.where(fitted & ~maps.converged, Rejection.NOT_CONVERGED, 0).astype(np.uint8)
    for name, values in maps.values.items():
        finite = np.isfinite(values)
        if name in maps.sds:
            finite &= np.isfinite(maps.sds[name])
        why |= np.where(fitted & ~finite, Rejection.NOT_FINITE, 0).astype(np.uint8)
    for name, maximum in checked.items():
        values = maps.values[name]
        why |= np.where(fitted & (values <= 0), Rejection.NOT_POSITIVE, 0).astype(np.uint8)
        why |= np.where(fitted & (values > maximum), Rejection.ABOVE_MAXIMUM, 0).astype(np.uint8)
        if name in maps.sds:
            why |= np.where(fitted & (maps.sds[name] > maximum), Rejection.UNCERTAIN, 0).astype(np.uint8)
    rejected = why != 0
    sds = {}
    for name, sd in maps.sds.items():
        if name in checked:
            sds[name] = np.where(rejected, checked[name], np.clip(sd, 0.0, checked[name]))
        else:
            sds[name] = np.where(rejected, 0.0, sd)
    return dataclasses.replace(
        maps,
        values={name: np.where(rejected, 0.0, values).astype(np.float32) for name, values in maps.values.items()},
        sds={name: sd.astype(np.float32) for name, sd in sds.items()},
        rejected=why,
        maxima=MappingProxyType(checked),
    )


def bounded(values: np.ndarray, maximum: float) -> np.ndarray:
    """Return values clamped into [0, maximum], with the non-finite ones at the maximum (as uncertain as can be).

    Parameters
    ----------
    values : A map of one quantity, any shape.
    maximum : Its largest plausible value, in its unit.

    Returns
    -------
    Values, same shape, float32.
    """
    return np.clip(np.nan_to_num(values, nan=maximum, posinf=maximum, neginf=0.0), 0.0, maximum).astype(np.float32)


def rejection_counts(rejected: np.ndarray) -> dict[str, int]:
    """Return how many pixels were rejected for every reason that occurred (a pixel may count under several).

    Parameters
    ----------
    rejected : ``Rejection`` flags per pixel (``SliceMaps.rejected``). Shape `(y, x)` uint8.

    Returns
    -------
    Reason in words (``REASONS``) to its number of pixels, in ``Rejection`` order, reasons that did not occur left out.
    """
    counts = {words: int(np.count_nonzero(rejected & reason)) for reason, words in REASONS.items()}
    return {words: count for words, count in counts.items() if count}


def describe_rejections(maps: SliceMaps) -> str:
    """Return in words how many fitted pixels were rejected and why (for the per-slice log).

    Parameters
    ----------
    maps : Maps after ``plausible_maps``.

    Returns
    -------
    E.g. ``"12 of 3000 fitted pixels rejected (T1 max 5000): 9 above the maximum, 3 not converged"``.
    """
    fitted = int(maps.mask.sum())
    if maps.rejected is None:
        return f"{fitted} fitted pixels, not checked for plausibility"
    limits = ", ".join(f"{name} max {maximum:g}" for name, maximum in maps.maxima.items()) or "no map checked"
    counts = rejection_counts(maps.rejected)
    reasons = ", ".join(f"{count} {words}" for words, count in counts.items())
    total = int(np.count_nonzero(maps.rejected))
    return f"{total} of {fitted} fitted pixels rejected ({limits}){': ' + reasons if reasons else ''}"
