"""Output: our rich items back to ``ismrmrd.Image`` series that carry their meaning in meta."""

from dataclasses import dataclass

import ismrmrd
import numpy as np

from gadgets.image_meta import ROLE_KEY, SEQUENCE_DESCRIPTION_KEY, ImageMeaning, set_meaning
from gadgets.items import MapImages, PhaseImages
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register
from gadgets.windowing import percentile_window
from qmri_models.fitting.maps import MASK_THRESHOLD, signal_mask


@dataclass(frozen=True)
class ImageSeriesConfig(GadgetConfig):
    """Properties of ImageSeriesGadget."""

    series_index: int = prop(1, "image_series_index of the per-phase magnitude images", minimum=0)
    data_role: str = prop("Image", f"{ROLE_KEY} written in each image's meta")
    sequence_description: str = prop("_phases", f"suffix for {SEQUENCE_DESCRIPTION_KEY} (the series description)")
    send_uncertainty: bool = prop(True, "also send the per-phase uncertainty (SD) images when the slice has them")
    uncertainty_series_index: int = prop(2, "image_series_index of the per-phase uncertainty images", minimum=0)


@register("ImageSeriesGadget", ImageSeriesConfig, consumes=(PhaseImages,), produces=(ismrmrd.Image,))
def image_series(connection: GadgetConnection) -> None:
    """Send each slice's phase images as magnitude ismrmrd.Images of one series, phase and prep time in meta."""
    config = ImageSeriesConfig.from_connection(connection)
    connection.filter(PhaseImages)
    for item in connection:
        for image in phase_images_to_mrd(item, config):
            connection.send(image)


UNCERTAINTY_ROLE = "PhaseSD"
"""Role (``gadgets.image_meta``) of the per-phase uncertainty images (SD over MC samples, in the images' units)."""


def phase_images_to_mrd(item: PhaseImages, config: ImageSeriesConfig) -> list[ismrmrd.Image]:
    """Return one magnitude ``ismrmrd.Image`` per phase, then (when present and asked) one uncertainty image per phase.

    Meaning in meta (``gadgets.image_meta``): the role (the configured one, ``PhaseSD`` for the uncertainty), the
    sequence description, a comment, the phase index and preparation time, and one window per series over the
    values of the pixels with signal (the fit's default ``signal_mask`` of the magnitude images), not the background.

    Parameters
    ----------
    item : The slice's phase images.
    config : Series properties.

    Returns
    -------
    Images in phase order, the uncertainty images after them.
    """
    magnitude = np.abs(item.images)
    signal = signal_mask(magnitude, MASK_THRESHOLD)
    images = _phase_series(
        item, magnitude, signal, config.series_index, config.data_role, config.sequence_description, "phase"
    )
    if config.send_uncertainty and item.sd is not None:
        description = f"{config.sequence_description}_sd"
        label = "uncertainty (SD) of phase"
        images += _phase_series(
            item, item.sd, signal, config.uncertainty_series_index, UNCERTAINTY_ROLE, description, label
        )
    return images


def _phase_series(
    item: PhaseImages, values: np.ndarray, signal: np.ndarray, series: int, role: str, description: str, label: str
) -> list[ismrmrd.Image]:
    """Return one float ``ismrmrd.Image`` per phase of ``values`` `(phases, y, x)`, windowed on ``signal`` `(y, x)`."""
    magnitude = np.asarray(values, dtype=np.float32)
    n_phases = magnitude.shape[0]
    window = percentile_window(magnitude[:, signal], minimum=0.0)
    images = []
    for phase in range(n_phases):
        ref = item.references[phase]
        image = ismrmrd.Image.from_array(magnitude[phase], acquisition=ref, transpose=False)
        image.image_type = ismrmrd.IMTYPE_MAGNITUDE
        image.image_series_index = series
        image.image_index = item.slice * n_phases + phase + 1
        image.slice = item.slice
        image.set = phase
        image.field_of_view[:] = item.field_of_view_mm
        prep_ms = float(item.prep_times_ms[phase])
        meaning = ImageMeaning(
            role=role,
            sequence_description=description,
            comment=f"{label} {phase} prep {prep_ms:g} ms",
            window=window,
            phase_index=phase,
            prep_time_ms=prep_ms,
        )
        set_meaning(image, meaning)
        images.append(image)
    return images


@dataclass(frozen=True)
class MapSeriesConfig(GadgetConfig):
    """Properties of MapSeriesGadget."""

    map_series_index: int = prop(11, "image_series_index of the map (Gadgetron's mapping gadgets use 11)", minimum=0)
    sd_series_index: int = prop(12, "image_series_index of its SD map (Gadgetron's mapping gadgets use 12)", minimum=0)
    send_sd: bool = prop(True, "send the SD map series")
    window_center: float = prop(0.0, "window centre of the map in its unit (0: from the kept pixels' percentiles)")
    window_width: float = prop(0.0, "window width of the map in its unit (0: the kept pixels' 1st-99th percentile)")
    extra_maps: str = prop("", "further maps to send, comma-separated (e.g. T2,PD,MatchScore for MRF); none if empty")
    extra_series_index: int = prop(13, "image_series_index of the first further map; the others follow", minimum=0)
    extra_sd_series_index: int = prop(
        0, "image_series_index of the first further map's SD map, the others following; 0 sends none", minimum=0
    )
    send_model_fit: bool = prop(
        True, "send the model-based fit beside a learned map (PUQ's learned fit), when there is one"
    )
    model_fit_series_index: int = prop(16, "image_series_index of the model-based fit beside a learned map", minimum=0)

    @property
    def extra_map_names(self) -> list[str]:
        """The further maps' names, in series order."""
        return [name.strip() for name in self.extra_maps.split(",") if name.strip()]


@register("MapSeriesGadget", MapSeriesConfig, consumes=(MapImages,), produces=(ismrmrd.Image,))
def map_series(connection: GadgetConnection) -> None:
    """Send each slice's primary map, its SD map and any further maps as float ismrmrd.Images, meta as Gadgetron's."""
    config = MapSeriesConfig.from_connection(connection)
    connection.filter(MapImages)
    for item in connection:
        for image in map_images_to_mrd(item, config):
            connection.send(image)


def map_images_to_mrd(item: MapImages, config: MapSeriesConfig) -> list[ismrmrd.Image]:
    """Return the map image, (when asked) its SD image, the further maps, then (when there is one) the model fit.

    Values are in the map's unit (ms for T1 and T2) as float32, zero outside the fit mask and at pixels the
    plausibility step rejected, whose SD is marked at the quantity's plausible maximum (the comments say so). Meaning
    in meta (``gadgets.image_meta``), as Gadgetron's mapping gadgets write it: the role (``T1`` / ``T1SD``), a map
    (scanner-side converters must not rescale) in its unit, sequence description ``_<role>_MAP``, a comment and a
    window. Every window (but a fixed one from the properties) spans the 1st to 99th percentile of the kept pixels
    (fitted, not rejected), clipped into [0, maximum] for a map with a plausible maximum.

    Parameters
    ----------
    item : The slice's maps.
    config : Series properties.

    Returns
    -------
    The map image, the SD image, the further maps in ``extra_maps`` order, their SD maps (when
    ``extra_sd_series_index`` is set), then the model-based fit of a learned map (``SliceMaps.model_fit``, role
    ``<map>ModelFit``).

    Raises
    ------
    ValueError
        If a further map is not among the slice's maps, or an SD is asked for a map without one.
    """
    maps, name = item.maps, item.primary_map
    fixed = (config.window_center, config.window_width) if config.window_width > 0 else None
    images = [_map_image(item, maps.values[name], config.map_series_index, name, _map_comment(item, name), fixed)]
    if config.send_sd:
        if name not in maps.sds:
            raise ValueError(f"the {item.model} maps have no {name} SD; set send_sd to false")
        images.append(_map_image(item, maps.sds[name], config.sd_series_index, f"{name}SD", _sd_comment(item, name)))
    for offset, extra in enumerate(config.extra_map_names):
        if extra not in maps.values:
            raise ValueError(f"extra_maps names {extra!r}, but the {item.model} maps are {', '.join(maps.values)}")
        series = config.extra_series_index + offset
        images.append(_map_image(item, maps.values[extra], series, extra, _map_comment(item, extra)))
    for offset, extra in enumerate(config.extra_map_names if config.extra_sd_series_index else ()):
        if extra not in maps.sds:
            raise ValueError(f"the {item.model} maps have no {extra} SD; set extra_sd_series_index to 0")
        series = config.extra_sd_series_index + offset
        images.append(_map_image(item, maps.sds[extra], series, f"{extra}SD", _sd_comment(item, extra)))
    if config.send_model_fit and name in maps.model_fit:
        images.append(model_fit_image(item, config.model_fit_series_index))
    return images


def model_fit_image(item: MapImages, series: int) -> ismrmrd.Image:
    """Return the model-based fit of the slice's learned primary map as a map image of role ``<map>ModelFit``.

    Zero where the learned map is zero (not fitted or rejected), windowed as the learned map so the two compare.
    """
    name = item.primary_map
    maps = item.maps
    comment = (
        f"{name} ({maps.units[name]}) of the model-based fit of the same images as the learned {name} map; "
        "where the two differ the learned map is doubtful"
    )
    values = np.where(maps.kept, maps.model_fit[name], 0.0)
    window = map_window(item, maps.values[name], name)
    return _map_image(item, values, series, f"{name}ModelFit", comment, window, of=name)


def _map_comment(item: MapImages, name: str) -> str:
    """Return the image comment of a map: what it is and, when checked, what its zeros mean."""
    unit = item.maps.units[name]
    comment = f"{name} map ({unit}), {item.model}"
    if name in item.maps.maxima:
        comment += f"; 0 where not fitted or implausible (outside 0-{item.maps.maxima[name]:g} {unit} or no fit)"
    return comment


def _sd_comment(item: MapImages, name: str) -> str:
    """Return the image comment of an SD map: how it was made and, when checked, how it marks rejected pixels."""
    unit = item.maps.units[name]
    comment = f"{name} standard deviation ({unit}) {item.maps.sd_method}"
    if name in item.maps.maxima:
        maximum = f"{item.maps.maxima[name]:g} {unit}"
        comment += f"; clamped to 0-{maximum}; {maximum} marks a pixel whose {name} was rejected as implausible"
    return comment


def _map_image(
    item: MapImages,
    values: np.ndarray,
    series: int,
    role: str,
    comment: str,
    window: tuple[float, float] | None = None,
    *,
    of: str | None = None,
) -> ismrmrd.Image:
    """Return one float map image of the slice with Gadgetron's mapping meta; ``window`` None: from the kept pixels.

    ``of`` names the map whose unit (and plausible range, for the window) the image has; None: the role less ``SD``.
    """
    name = role.removesuffix("SD") if of is None else of
    meaning = ImageMeaning(
        role=role,
        is_map=True,
        units=item.maps.units[name],
        sequence_description=f"_{role}_MAP",
        comment=comment,
        window=window or map_window(item, values, name),
    )
    return map_image(item, values, series, meaning)


def map_window(item: MapImages, values: np.ndarray, name: str) -> tuple[float, float]:
    """Return the display window of a map of the slice: its kept pixels' 1st-99th percentile.

    Clipped into [0, maximum] when the map ``name`` has a plausible maximum (``SliceMaps.maxima``).

    Parameters
    ----------
    item : The slice's maps (the kept pixels, the maxima).
    values : The map, or an image in its unit (its SD, a bound). Shape `(y, x)`.
    name : The map's name (``T1``, ``T2`` ...).

    Returns
    -------
    ``(centre, width)`` in the map's unit.
    """
    maximum = item.maps.maxima.get(name)
    return percentile_window(values[item.maps.kept], minimum=None if maximum is None else 0.0, maximum=maximum)


def map_image(item: MapImages, values: np.ndarray, series: int, meaning: ImageMeaning) -> ismrmrd.Image:
    """Return one float32 image of the slice in series ``series``, geometry from its readouts, meta from ``meaning``.

    Parameters
    ----------
    item : The slice's maps (slice index, readouts, field of view).
    values : Pixel values in the map's unit. Shape `(y, x)`.
    series : Its ``image_series_index``.
    meaning : What the image is (``gadgets.image_meta``).

    Returns
    -------
    The image; ``image_index`` is the slice index plus 1.
    """
    image = ismrmrd.Image.from_array(values.astype(np.float32), acquisition=item.references[0], transpose=False)
    image.image_type = ismrmrd.IMTYPE_MAGNITUDE
    image.image_series_index = series
    image.image_index = item.slice + 1
    image.slice = item.slice
    image.field_of_view[:] = item.field_of_view_mm
    set_meaning(image, meaning)
    return image
