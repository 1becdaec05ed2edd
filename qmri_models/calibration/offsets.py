"""The offsets a calibration's scale multiplies: the map's SD on both sides, or its quantile head's offsets.

A calibration (``qmri_models.calibration.files.IntervalCalibration``) without a quantile head scales the SD the maps
carry (``value -+ lambda SD``); one with a head (``IntervalCalibration.quantile_head``) scales the head's predicted
lower and upper offsets (``qmri_models.networks.map_quantile_head``), ``[value - lambda lower, value + lambda upper]``.
The calibration, its check, the evaluation and MapIntervalGadget all take the offsets from here, so they bound the same
interval.
"""

from functools import lru_cache

import numpy as np

from qmri_models.networks.map_quantile_head import MapQuantileHead, quantile_offsets
from qmri_models.pretrained import load_map_quantile_head, quantile_head_path


def _head(source: str) -> MapQuantileHead:
    """Return the head of ``source``, loaded once per weights file as it is now.

    A file replaced under the same path, as a site may between streams, is loaded again, as calibration files are
    for every stream.
    """
    path = quantile_head_path(source)
    stat = path.stat()
    return _loaded_head(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _loaded_head(path: str, mtime_ns: int, size: int) -> MapQuantileHead:
    """Return the head in ``path``; the modification time and size are the cache key's, not read here."""
    return load_map_quantile_head(path)


def interval_offsets(
    quantile_head: str | None,
    quantity: str,
    value: np.ndarray,
    sd: np.ndarray,
    model_fit: np.ndarray | None,
    kept: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the lower and upper offsets (ms) of a calibrated interval around maps.

    Parameters
    ----------
    quantile_head : The calibration's head (``IntervalCalibration.quantile_head``), or None for the SD.
    quantity : The maps' quantity (T1, T2): the head must have been trained on it.
    value : The maps (ms). Shape `(slices, y, x)` or `(y, x)`.
    sd : Their SD (ms), of the calibration's kind. Same shape.
    model_fit : The model-based fit beside learned maps (ms), or None. Same shape.
    kept : Pixels the fit kept, bool. Same shape.

    Returns
    -------
    Lower and upper offsets, >= 0, in the maps' unit; the shape of ``value`` (0 outside ``kept`` with a head).
    """
    if quantile_head is None:
        return sd, sd
    head = _head(quantile_head)
    if head.quantity != quantity:
        raise ValueError(f"the quantile head {quantile_head!r} was trained on {head.quantity} maps, not {quantity}")
    return quantile_offsets(head, value, sd, model_fit, kept)
