"""Fitting: a slice's phase images to parametric maps (T1, T2 ...) with their SD, every pixel at once."""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gadgetron.types.image_array import ImageArray

from gadgets.buffering import AcquisitionBufferConfig, phase_prep_times_ms
from gadgets.gadgetron_types import image_array_to_phase_images
from gadgets.items import MapImages, PhaseImages
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, of_types, register
from qmri_models.device import torch_device
from qmri_models.fitting.maps import MASK_THRESHOLD, MIN_ISLAND_PIXELS, fit_maps
from qmri_models.fitting.plausibility import MAX_T1_MS, MAX_T2_MS, describe_rejections, plausible_maps
from qmri_models.protocols import ProtocolName, describe_protocols, protocol_spec
from qmri_models.signal_models import signal_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParameterFitConfig(GadgetConfig):
    """Properties of ParameterFitGadget."""

    model: ProtocolName = prop("molli", f"protocol whose signal model is fitted to every pixel: {describe_protocols()}")
    mask_threshold: float = prop(
        MASK_THRESHOLD,
        "pixels whose brightest phase is below this fraction of the bright level are background",
        minimum=0.0,
        maximum=0.99,
    )
    min_island_pixels: int = prop(
        MIN_ISLAND_PIXELS,
        "islands of the mask smaller than this (pixels, 8-connected) are background, not fitted; 1 keeps all",
        minimum=1,
        maximum=1_000_000,
    )
    max_t1_ms: float = prop(
        MAX_T1_MS,
        "largest plausible T1 (ms): a pixel above it is set to 0, its SD to this value",
        minimum=1.0,
        maximum=1e5,
    )
    max_t2_ms: float = prop(
        MAX_T2_MS,
        "largest plausible T2 (ms): a pixel above it is set to 0, its SD to this value",
        minimum=1.0,
        maximum=1e5,
    )
    max_iterations: int = prop(100, "most Levenberg-Marquardt iterations per pixel", minimum=1, maximum=1000)
    device: str = prop("auto", "auto (CUDA when present), cpu or cuda")
    send_phase_images: bool = prop(False, "also pass the phase images on (an ImageSeriesGadget downstream sends them)")

    @property
    def maxima(self) -> Mapping[str, float]:
        """Largest plausible value of every checked map, in ms (``plausible_maps``)."""
        return {"T1": self.max_t1_ms, "T2": self.max_t2_ms}


@register(
    "ParameterFitGadget",
    ParameterFitConfig,
    consumes=(PhaseImages, ImageArray),
    produces=(PhaseImages, MapImages),
    sends_under=lambda config: (PhaseImages, MapImages) if config.send_phase_images else (MapImages,),
)
def parameter_fit(connection: GadgetConnection) -> None:
    """Fit the chain's signal model to each slice's phase images; send the maps (and the images when asked)."""
    config = ParameterFitConfig.from_connection(connection)
    device = torch_device(config.device)
    connection.filter(of_types(PhaseImages, ImageArray))
    for item in connection:
        for phases in _phase_images(item, connection.header):
            maps = fit_slice(phases, config, device=str(device))
            if config.send_phase_images:  # first, so the maps' DICOM can reference the phase images it came from
                connection.send(phases)
            connection.send(maps)


def _phase_images(item: PhaseImages | ImageArray, header: Any) -> list[PhaseImages]:
    """Return our phase images, converting a Gadgetron ``ImageArray`` (from its own reconstruction) slice by slice.

    An array without our meta takes its preparation times where the buffer would find them by default (the
    protocol, else each image header's ``user_int[7]``).
    """
    if isinstance(item, PhaseImages):
        return [item]
    defaults = AcquisitionBufferConfig()
    return image_array_to_phase_images(item, header, lambda hdr, refs: phase_prep_times_ms(hdr, refs, defaults))


def fit_slice(item: PhaseImages, config: ParameterFitConfig, *, device: str = "cpu") -> MapImages:
    """Return the maps of one slice's phase images.

    Parameters
    ----------
    item : The slice's phase images and preparation times (ms).
    config : Fit properties.
    device : Torch device to fit on.

    Returns
    -------
    Maps and SD maps of the model, implausible pixels rejected (``plausible_maps``), ready for the output gadgets.
    """
    model = signal_model(protocol_spec(config.model).model)
    start = time.perf_counter()
    fitted = fit_maps(
        model,
        item.images,
        np.asarray(item.prep_times_ms, dtype=np.float64),
        mask_threshold=config.mask_threshold,
        min_island_pixels=config.min_island_pixels,
        device=device,
        max_iterations=config.max_iterations,
    )
    maps = plausible_maps(fitted, config.maxima)
    n_fitted = int(maps.mask.sum())
    log.info(
        "slice %d: %s fit of %d pixels in %.2f s on %s, %.1f%% converged",
        item.slice,
        model.name,
        n_fitted,
        time.perf_counter() - start,
        device,
        100.0 * float(maps.converged[maps.mask].mean()) if n_fitted else 100.0,
    )
    log.info("slice %d: %s", item.slice, describe_rejections(maps))
    return MapImages(
        maps=maps,
        primary_map=model.primary_map,
        model=model.name,
        context=item.context,
    )
