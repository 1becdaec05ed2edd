"""Calibrated intervals on the stream: the lower and upper bound series of each slice's map (issue 15).

The interval is ``value -+ scale * SD`` of the map's SD, or ``[value - scale lower, value + scale upper]`` with the
offsets of a map quantile head when the calibration names one (``qmri_models.calibration.offsets``), with the scale
lambda a calibration file holds for the stream's acceleration (``qmri_models.calibration.files``, made by ``qmri
calibrate``): with probability at least 1 - delta over the calibration draw, the expected fraction of kept pixels whose
true value lies outside it is at most alpha (``qmri_models.calibration.risk_control``). A scale calibrated at another
acceleration promises nothing, so a stream at an acceleration the file does not cover gets no bound series: by default
its maps still flow and the client gets one WARNING text saying why (``uncalibrated=skip``); ``uncalibrated=error`` ends
the stream instead.

The calibration must be of the SD the maps carry (``SliceMaps.sd_kind``: the fit's, the MC spread, or the MC spread
combined with the learned fit's distance to the model fit); another is refused, since its scale promises nothing.
When the calibration holds out-of-distribution thresholds and the maps a model-based fit beside a learned map (PUQ),
each slice also gets a flag series: 1 where the learned map lies further from the model fit than all but ``level``
of the calibration's pixels (``qmri_models.calibration.out_of_distribution``), and a WARNING text when more than
``WARN_FLAGGED_FRACTION`` of the slice's kept pixels are flagged.
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
from qmri_models.calibration.offsets import interval_offsets
from qmri_models.calibration.out_of_distribution import OutOfDistribution

log = logging.getLogger(__name__)

WARN_FLAGGED_FRACTION = 0.05
"""A slice whose flagged fraction of kept pixels exceeds this gets a WARNING text (5x the default flag level)."""


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
    flag_series_index: int = prop(
        23,
        "image_series_index of the out-of-distribution flags of a learned map (1: flagged), when calibrated",
        minimum=0,
    )
    uncalibrated: Literal["skip", "error"] = prop(
        "skip",
        "at an acceleration the calibration does not cover: skip (the maps without bound series, one WARNING text "
        "to the client) or error (end the stream)",
    )


@register("MapIntervalGadget", MapIntervalConfig, consumes=(MapImages,), produces=(MapImages, ismrmrd.Image, str))
def map_intervals(connection: GadgetConnection) -> None:
    """Send each slice's calibrated bounds of its map (value -+ scale * SD) and its flags, then pass the maps on."""
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
    noted = False
    for item in connection:
        note = recipe_note(calibration, item)
        if calibrated and note and not noted:
            log.warning(
                "intervals of calibration %s%s: the coverage promise is for scans like those", calibration.id, note
            )
            noted = True
        if calibrated:
            for image in interval_images(item, calibration, acceleration, config):
                connection.send(image)
            flags = out_of_distribution_flags(item, calibration, acceleration)
            if flags is not None and calibration.out_of_distribution is not None:
                ood = calibration.out_of_distribution
                connection.send(flag_image(item, flags, ood, calibration, acceleration, config))
                warning = flag_warning(item, flags)
                if warning:
                    log.warning("%s", warning)
                    connection.send(warning)
        connection.send(item)


def recipe_note(calibration: IntervalCalibration, item: MapImages) -> str:
    """Return ``''`` for maps made as the calibration's were, else what differs: the matrix, the MC samples.

    The note starts with ``"; "`` so it can end an image comment.
    """
    recipe = calibration.recipe
    notes = []
    shape = item.maps.values[item.primary_map].shape
    matrix = recipe.get("matrix")
    if isinstance(matrix, int) and shape != (matrix, matrix):
        notes.append(f"calibrated on {matrix}x{matrix} slices, this map is {'x'.join(map(str, shape))}")
    samples = item.maps.samples.get(item.primary_map)
    calibrated_samples = recipe.get("mc_samples")
    if isinstance(calibrated_samples, int) and samples is not None and len(samples) != calibrated_samples:
        notes.append(f"calibrated with {calibrated_samples} MC samples, this map has {len(samples)}")
    return "".join(f"; {note}" for note in notes)


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

    The bounds are ``value - scale * SD`` and ``value + scale * SD`` (or the quantile head's lower and upper offsets
    in place of the SD) over the kept pixels (fitted, not rejected as implausible), 0 elsewhere as in the map. The
    lower bound is clamped at 0: a relaxation time is positive, so a negative lower bound says no more than 0 and
    clamping leaves the coverage unchanged. Both carry the map's window
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
    if calibration.uncertainty != item.maps.sd_kind:
        raise ValueError(
            f"calibration {calibration.id!r} scales the SD kind {calibration.uncertainty}, but the {item.model} maps' "
            f"SD is {item.maps.sd_kind} ({item.maps.sd_method}): use a calibration made on this chain"
        )
    scale = calibration.scale_for(acceleration)
    kept = item.maps.kept
    value = item.maps.values[name]
    below, above = interval_offsets(
        calibration.quantile_head, name, value, item.maps.sds[name], item.maps.model_fit.get(name), kept
    )
    low, high = scaled_interval(value[kept], below[kept], above[kept], scale.scale)
    lower, upper = np.zeros(value.shape), np.zeros(value.shape)
    lower[kept] = np.maximum(low, 0.0)
    upper[kept] = high
    window = map_window(item, value, name)
    unit = item.maps.units[name]
    coverage = f"{100 * (1 - calibration.alpha):g}%"
    offset_words = "SD" if calibration.quantile_head is None else "the quantile head's offset"
    sides: tuple[tuple[Bound, str, np.ndarray, int], ...] = (
        ("lower", "-", lower, config.lower_series_index),
        ("upper", "+", upper, config.upper_series_index),
    )
    images = []
    for bound, sign, values, series in sides:
        role = bound_role(name, bound)
        comment = (
            f"{name} {bound} bound ({unit}) = {name} {sign} {scale.scale:.4g} x {offset_words}, {coverage} calibrated "
            "interval "
            f"at R={acceleration} (calibration {calibration.id}, delta {calibration.delta:g}); "
            f"{'clamped at 0 (a relaxation time is positive); ' if bound == 'lower' else ''}0 where the map is 0"
            f"{recipe_note(calibration, item)}"
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


def out_of_distribution_flags(
    item: MapImages, calibration: IntervalCalibration, acceleration: int
) -> np.ndarray | None:
    """Return the slice's flagged pixels `(y, x)` bool (kept pixels only), or None without thresholds or model fit."""
    name = item.primary_map
    ood = calibration.out_of_distribution
    if ood is None or name not in item.maps.model_fit or acceleration not in ood.thresholds:
        return None
    kept = item.maps.kept
    return ood.flags(item.maps.values[name], item.maps.model_fit[name], acceleration) & kept


def flag_image(
    item: MapImages,
    flags: np.ndarray,
    ood: OutOfDistribution,
    calibration: IntervalCalibration,
    acceleration: int,
    config: MapIntervalConfig,
) -> ismrmrd.Image:
    """Return the flag image of the slice: 1 at flagged pixels, 0 elsewhere, role ``<map>OutOfDistribution``.

    ``ood`` is the calibration's out-of-distribution record whose threshold at ``acceleration`` made ``flags``.
    """
    name = item.primary_map
    role = f"{name}OutOfDistribution"
    meaning = ImageMeaning(
        role=role,
        is_map=True,
        units="1",
        sequence_description=f"_{role}_MAP",
        comment=(
            f"1 where the learned {name} differs from the model-based fit by more than "
            f"{100 * ood.thresholds[acceleration]:.3g}% of its value, which at most {100 * ood.level:g}% of the "
            f"calibration's brain pixels did at R={acceleration} (calibration {calibration.id}): outside what the "
            "learned fit knows, read its value with care"
        ),
        window=(0.5, 1.0),
        calibration_id=calibration.id,
    )
    return map_image(item, flags.astype(np.float32), config.flag_series_index, meaning)


def flag_warning(item: MapImages, flags: np.ndarray) -> str:
    """Return the WARNING text of a slice with more than ``WARN_FLAGGED_FRACTION`` of its kept pixels flagged, or ''."""
    kept = int(item.maps.kept.sum())
    flagged = int(flags.sum())
    if kept == 0 or flagged <= WARN_FLAGGED_FRACTION * kept:
        return ""
    name = item.primary_map
    return (
        f"WARNING slice {item.slice}: {flagged} of {kept} {name} pixels ({100 * flagged / kept:.0f}%) are outside "
        f"what the learned fit was calibrated on (flag series); compare the learned {name} with the model-based fit "
        "there before reading values"
    )
