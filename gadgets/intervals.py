"""Calibrated intervals on the stream: the lower and upper bound series of each slice's map (issue 15).

The interval is ``value -+ scale * SD`` of the map's SD, with the scale lambda a calibration file holds for the
stream's acceleration (``qmri_models.calibration.files``, made by ``qmri calibrate``): with probability at least
1 - delta over the calibration draw, the expected fraction of kept pixels whose true value lies outside it is at most
alpha (``qmri_models.calibration.risk_control``). A scale calibrated at another acceleration promises nothing, so a
stream at an acceleration the file does not cover gets no bound series: by default its maps still flow and the client
gets one WARNING text saying why (``uncalibrated=skip``); ``uncalibrated=error`` ends the stream instead.
"""

import logging
from dataclasses import dataclass
from typing import Any, Literal

import ismrmrd
import numpy as np

from gadgets.image_meta import Bound, ImageMeaning, bound_role
from gadgets.items import MapImages
from gadgets.output import map_image, map_window
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.calibration.files import IntervalCalibration, load_interval_calibration, shipped_calibrations
from qmri_models.calibration.intervals import scaled_interval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapIntervalConfig(GadgetConfig):
    """Properties of MapIntervalGadget."""

    calibration: str = prop(
        "",
        "interval calibration: a shipped name, or (site chains only) a file written by qmri calibrate; required",
        site=True,
        client_choices=tuple(shipped_calibrations()),
    )
    lower_series_index: int = prop(21, "image_series_index of the lower bound of the map's interval", minimum=0)
    upper_series_index: int = prop(22, "image_series_index of the upper bound of the map's interval", minimum=0)
    uncalibrated: Literal["skip", "error"] = prop(
        "skip",
        "at an acceleration the calibration does not cover: skip (the maps without bound series, one WARNING text "
        "to the client) or error (end the stream)",
    )


@register("MapIntervalGadget", MapIntervalConfig, consumes=(MapImages,), produces=(MapImages, ismrmrd.Image, str))
def map_intervals(connection: GadgetConnection) -> None:
    """Send each slice's calibrated lower and upper bounds of its map (value -+ scale * SD), then pass the maps on."""
    config = MapIntervalConfig.from_connection(connection)
    if not config.calibration:
        raise ValueError(
            "MapIntervalGadget needs its calibration property: a shipped calibration "
            f"({', '.join(shipped_calibrations()) or 'none shipped'}) or, in a site chain, a calibration file"
        )
    calibration = load_interval_calibration(config.calibration)
    acceleration = header_acceleration(connection.header)
    calibrated = acceleration in calibration.scales
    if not calibrated:
        if config.uncalibrated == "error":
            calibration.scale_for(acceleration)  # raises, naming the calibrated accelerations, before any slice
        warning = (
            f"WARNING no interval bounds for this scan: calibration {calibration.id} covers accelerations "
            f"{sorted(calibration.scales)}, the scan is at {acceleration}; the maps and SD maps are sent without them"
        )
        log.warning("%s", warning)
        connection.send(warning)
    connection.filter(MapImages)
    for item in connection:
        if calibrated:
            for image in interval_images(item, calibration, acceleration, config):
                connection.send(image)
        connection.send(item)


def header_acceleration(header: Any) -> int:
    """Return the stream's phase-encoding acceleration: the first encoding's ``kspace_encoding_step_1`` factor.

    Parameters
    ----------
    header : The stream's ISMRMRD header.

    Returns
    -------
    The acceleration factor, 1 when the header has no parallel imaging section.

    Raises
    ------
    ValueError
        If the factor is below 1.
    """
    encoding = header.encoding[0] if header.encoding else None
    parallel = encoding.parallelImaging if encoding is not None else None
    factors = parallel.accelerationFactor if parallel is not None else None
    factor = factors.kspace_encoding_step_1 if factors is not None else None
    if factor is None:
        return 1
    if int(factor) < 1:
        raise ValueError(f"header accelerationFactor kspace_encoding_step_1 must be at least 1; got {factor}")
    return int(factor)


def interval_images(
    item: MapImages, calibration: IntervalCalibration, acceleration: int, config: MapIntervalConfig
) -> list[ismrmrd.Image]:
    """Return the lower and upper bound images of the slice's primary map.

    The bounds are ``value - scale * SD`` and ``value + scale * SD`` over the kept pixels (fitted, not rejected as
    implausible), 0 elsewhere as in the map. The lower bound is clamped at 0: a relaxation time is positive, so a
    negative lower bound says no more than 0 and clamping leaves the coverage unchanged. Both carry the map's window
    (a viewer shows the map and its bounds alike) and the interval's meaning in meta (``gadgets.image_meta``: which
    bound of which quantity, alpha, delta, the scale, the calibration id).

    Parameters
    ----------
    item : The slice's maps.
    calibration : The interval calibration of the map's quantity.
    acceleration : The stream's acceleration factor; its scale is used.
    config : Series properties.

    Returns
    -------
    The lower bound image, then the upper bound image.

    Raises
    ------
    ValueError
        If the calibration is of another quantity than the primary map, the maps have no SD of it, or the
        calibration has no scale at ``acceleration``.
    """
    name = item.primary_map
    if calibration.quantity != name:
        raise ValueError(
            f"calibration {calibration.id!r} is of {calibration.quantity}, but the {item.model} maps are of {name}: "
            "use a calibration of this chain's map"
        )
    if name not in item.maps.sds:
        raise ValueError(f"the {item.model} maps have no {name} SD, which the interval {name} -+ scale * SD needs")
    scale = calibration.scale_for(acceleration)
    kept = item.maps.kept
    value = item.maps.values[name]
    sd = item.maps.sds[name][kept]
    low, high = scaled_interval(value[kept], sd, sd, scale.scale)
    lower, upper = np.zeros(value.shape), np.zeros(value.shape)
    lower[kept] = np.maximum(low, 0.0)
    upper[kept] = high
    window = map_window(item, value, name)
    unit = item.maps.units[name]
    coverage = f"{100 * (1 - calibration.alpha):g}%"
    sides: tuple[tuple[Bound, str, np.ndarray, int], ...] = (
        ("lower", "-", lower, config.lower_series_index),
        ("upper", "+", upper, config.upper_series_index),
    )
    images = []
    for bound, sign, values, series in sides:
        role = bound_role(name, bound)
        comment = (
            f"{name} {bound} bound ({unit}) = {name} {sign} {scale.scale:.4g} x SD, {coverage} calibrated interval "
            f"at R={acceleration} (calibration {calibration.id}, delta {calibration.delta:g}); "
            f"{'clamped at 0 (a relaxation time is positive); ' if bound == 'lower' else ''}0 where the map is 0"
        )
        meaning = ImageMeaning(
            role=role,
            is_map=True,
            units=unit,
            sequence_description=f"_{role}_MAP",
            comment=comment,
            window=window,
            bound=bound,
            alpha=calibration.alpha,
            delta=calibration.delta,
            scale=scale.scale,
            calibration_id=calibration.id,
        )
        images.append(map_image(item, values, series, meaning))
    return images
