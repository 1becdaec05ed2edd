"""Display windows: the one rule every series (MRD meta, DICOM) uses to pick its window centre and width."""

import numpy as np

LOW_PERCENTILE = 1.0
"""Lower edge of a window, as a percentile of the values it is made from."""
HIGH_PERCENTILE = 99.0
"""Upper edge of a window, as a percentile of the values it is made from."""


def percentile_window(
    values: np.ndarray, *, minimum: float | None = None, maximum: float | None = None
) -> tuple[float, float]:
    """Return a ``(centre, width)`` window over the 1st to 99th percentile of the finite values, clipped.

    Give it the values that matter (a map's fitted, kept pixels; the signal pixels of phase images), never the
    background, whose zeros would pull the window down. The edges are clipped into ``[minimum, maximum]`` where
    those are given. Edge cases: no finite value gives the whole ``[minimum, maximum]`` (a missing bound is 1
    from the other, or ``[0, 1]`` without bounds); values all equal to ``v`` give ``[v / 2, 3 v / 2]`` (``[-0.5, 0.5]``
    for 0), clipped; a window that clipping leaves empty becomes the whole ``[minimum, maximum]``. NaN and infinite
    values are left out; NaN or infinite bounds are an error.

    Parameters
    ----------
    values : Values the window is for, in their unit; any shape.
    minimum : Lowest value the window may show (0 for magnitudes and relaxation times), or None.
    maximum : Highest value the window may show (a map's plausible maximum), or None.

    Returns
    -------
    Window centre and width, in the values' unit; the width is positive.

    Raises
    ------
    ValueError
        If ``minimum`` or ``maximum`` is not finite, or ``minimum`` is not below ``maximum``.
    """
    for name, bound in (("minimum", minimum), ("maximum", maximum)):
        if bound is not None and not np.isfinite(bound):
            raise ValueError(f"window {name} must be finite or None; got {bound}")
    if minimum is not None and maximum is not None and not minimum < maximum:
        raise ValueError(f"window minimum {minimum} must be below its maximum {maximum}")
    whole = _whole(minimum, maximum)
    finite = np.asarray(values)[np.isfinite(values)]
    if not finite.size:
        low, high = whole
    else:
        low, high = (float(v) for v in np.percentile(finite, [LOW_PERCENTILE, HIGH_PERCENTILE]))
        if high <= low:
            half = abs(high) / 2 if high else 0.5
            low, high = low - half, high + half
        low = low if minimum is None else max(low, minimum)
        high = high if maximum is None else min(high, maximum)
        if high <= low:
            low, high = whole
    return (low + high) / 2, high - low


def _whole(minimum: float | None, maximum: float | None) -> tuple[float, float]:
    """Return the window's fallback edges: ``[minimum, maximum]``, a missing bound 1 from the other, else [0, 1]."""
    if minimum is not None:
        return minimum, minimum + 1.0 if maximum is None else maximum
    return (0.0, 1.0) if maximum is None else (maximum - 1.0, maximum)
