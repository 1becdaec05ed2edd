"""Scaled uncertainty intervals and their per-item miscoverage losses.

One family covers both kinds of interval the product calibrates (seed 001, eq. (4))::

    T_lambda = [value - lambda * lower_offset, value + lambda * upper_offset]

- quantile regression: ``lower_offset = value - q_low`` and ``upper_offset = q_high - value`` from the two heads;
- a conformalised scalar uncertainty ``u`` (the error head's RMS error, the MC SD, the fit SD):
  ``lower_offset = upper_offset = u``, the symmetric interval ``value +- lambda * u``.

The intervals grow with lambda, so each target has a smallest covering scale (``required_scale``) and a pixel is
covered at lambda exactly when that scale is <= lambda. An item (a slice, an image) scores the fraction of its mask's
pixels left outside: one loss in [0, 1] per item, non-increasing in lambda, as the paper calibrates per image.
"""

import numpy as np
import numpy.typing as npt


def _broadcast(**arrays: npt.ArrayLike) -> list[np.ndarray]:
    """Return the arrays as float64, broadcast together; a ValueError names them when they do not broadcast."""
    values = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
    try:
        return list(np.broadcast_arrays(*values))
    except ValueError as error:
        shapes = ", ".join(f"{name} {v.shape}" for name, v in zip(arrays, values, strict=True))
        raise ValueError(f"shapes do not broadcast: {shapes}") from error


def _check_offsets(lower_offset: np.ndarray, upper_offset: np.ndarray) -> None:
    """Raise a ValueError naming the offset that is negative or NaN."""
    for name, offset in (("lower_offset", lower_offset), ("upper_offset", upper_offset)):
        bad = offset[~(offset >= 0.0)]
        if bad.size:
            raise ValueError(f"{name} must be >= 0 (an interval half-width), got {bad.flat[0]}")


def scaled_interval(
    value: npt.ArrayLike, lower_offset: npt.ArrayLike, upper_offset: npt.ArrayLike, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the interval ``[value - scale * lower_offset, value + scale * upper_offset]``.

    Parameters
    ----------
    value : Point estimate (reconstruction, map). Shape `(...)`.
    lower_offset : Distance from the estimate down to the lower bound before scaling, >= 0, broadcastable.
    upper_offset : Distance from the estimate up to the upper bound before scaling, >= 0, broadcastable.
    scale : Calibrated scale lambda, >= 0.

    Returns
    -------
    Lower and upper bounds, in the unit of ``value``. Shape: the broadcast shape.
    """
    if not 0.0 <= scale < np.inf:
        raise ValueError(f"scale must be finite and >= 0, got {scale}")
    value_, lower, upper = _broadcast(value=value, lower_offset=lower_offset, upper_offset=upper_offset)
    _check_offsets(lower, upper)
    return value_ - scale * lower, value_ + scale * upper


def required_scale(
    value: npt.ArrayLike, target: npt.ArrayLike, lower_offset: npt.ArrayLike, upper_offset: npt.ArrayLike
) -> np.ndarray:
    """Return the smallest scale lambda whose interval covers each target.

    ``(value - target) / lower_offset`` below the estimate, ``(target - value) / upper_offset`` above it, 0 on it;
    ``inf`` where the offset on the target's side is 0 (no scale covers it).

    Parameters
    ----------
    value : Point estimate, finite. Shape `(...)`.
    target : True value (the reference image or map), finite, broadcastable.
    lower_offset : Lower offset before scaling, >= 0, broadcastable.
    upper_offset : Upper offset before scaling, >= 0, broadcastable.

    Returns
    -------
    Smallest covering scale, in [0, inf]. Shape: the broadcast shape.
    """
    value_, target_, lower, upper = _broadcast(
        value=value, target=target, lower_offset=lower_offset, upper_offset=upper_offset
    )
    for name, array in (("value", value_), ("target", target_)):
        bad = array[~np.isfinite(array)]
        if bad.size:
            raise ValueError(f"{name} must be finite, got {bad.flat[0]}")
    _check_offsets(lower, upper)
    error = target_ - value_
    offset = np.where(error < 0.0, lower, upper)
    distance = np.abs(error)
    scale = np.full(distance.shape, np.inf)
    np.divide(distance, offset, out=scale, where=offset > 0.0)
    return np.where(distance == 0.0, 0.0, scale)


def miscoverage_losses(
    required_scales: npt.ArrayLike, lambdas: npt.ArrayLike, *, mask: npt.ArrayLike | None = None
) -> np.ndarray:
    """Return each item's fraction of mask pixels left outside the interval, at every scale.

    A pixel is outside at lambda when its required scale exceeds lambda. Each pixel's scale is placed once on the
    lambda grid (no item x pixel x lambda array), so a calibration set of full slices fits in memory.

    Parameters
    ----------
    required_scales : Smallest covering scale of every pixel (``required_scale``). Shape `(items, *pixels)`.
    lambdas : Scales to score, finite, >= 0, strictly increasing. Shape `(n_lambdas,)`.
    mask : Pixels that count, bool, broadcastable to ``required_scales`` (all pixels if None); every item needs one.

    Returns
    -------
    Miscoverage loss of every item at every scale, in [0, 1], non-increasing along lambdas. Shape
    `(items, n_lambdas)`.
    """
    scales = np.asarray(required_scales, dtype=np.float64)
    grid = check_lambdas(lambdas)
    if scales.ndim < 1 or scales.shape[0] < 1:
        raise ValueError(f"required_scales needs a leading items axis with at least one item, got {scales.shape}")
    if np.isnan(scales).any() or (scales < 0.0).any():
        raise ValueError("required_scales must be >= 0 and not NaN (see required_scale)")
    keep = (
        np.ones(scales.shape, dtype=bool)
        if mask is None
        else np.broadcast_to(np.asarray(mask, dtype=bool), scales.shape)
    )
    n_items = scales.shape[0]
    flat_scales = scales.reshape(n_items, -1)
    flat_keep = keep.reshape(n_items, -1)
    n_pixels = flat_keep.sum(axis=1)
    empty = np.flatnonzero(n_pixels == 0)
    if empty.size:
        raise ValueError(f"the mask keeps no pixel of item {empty[0]}: its miscoverage is undefined")
    first_covering = np.searchsorted(grid, flat_scales, side="left")
    item = np.broadcast_to(np.arange(n_items)[:, None], flat_scales.shape)
    slots = grid.size + 1
    counts = np.bincount((item * slots + first_covering)[flat_keep], minlength=n_items * slots).reshape(n_items, slots)
    covered = np.cumsum(counts, axis=1)[:, : grid.size]
    return 1.0 - covered / n_pixels[:, None]


def check_lambdas(lambdas: npt.ArrayLike) -> np.ndarray:
    """Return the scale grid as float64 after checking it is 1-D, non-empty, finite, >= 0 and strictly increasing.

    Parameters
    ----------
    lambdas : Candidate scales. Shape `(n_lambdas,)`.

    Returns
    -------
    The same scales. Shape `(n_lambdas,)`.
    """
    grid = np.asarray(lambdas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"lambdas must be a non-empty 1-D grid, got shape {grid.shape}")
    if not (np.isfinite(grid).all() and (grid >= 0.0).all()):
        raise ValueError(f"lambdas must be finite and >= 0, got min {grid.min()} max {grid.max()}")
    steps = np.diff(grid)
    if (steps <= 0.0).any():
        raise ValueError(
            f"lambdas must be strictly increasing, got {grid[np.argmax(steps <= 0.0)]} before a smaller or equal one"
        )
    return grid
