"""PUQ stage 2 on the stream: maps from the MC mean images guided by their per-phase uncertainty, SD over samples.

The learned fit also sends the model-based fit of the same images on (``SliceMaps.model_fit``; MapSeriesGadget's
series 16), and by default its map SD grows with their disagreement (``qmri_models.fitting.guided``).
"""

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gadgets.fitting import ParameterFitConfig
from gadgets.items import MapImages, PhaseImages
from gadgets.runtime.config import prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.device import torch_device
from qmri_models.fitting.guided import fit_guided_maps
from qmri_models.fitting.plausibility import describe_rejections
from qmri_models.networks.fit_mlp import FitMlp
from qmri_models.pretrained import MAP_NAMES, load_fit_mlp
from qmri_models.protocols import ProtocolName, protocol_spec
from qmri_models.signal_models import signal_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PuqFitConfig(ParameterFitConfig):
    """Properties of PuqFitGadget: those of ParameterFitGadget, and how the uncertainty guides the fit."""

    model: ProtocolName = prop(
        "molli", "protocol whose signal model is fitted (shipped weights: molli, t2prep); names the learned fit's map"
    )
    send_phase_images: bool = prop(True, "also pass the mean images and their SD on (ImageSeriesGadget sends them)")
    fit: Literal["learned", "model_based"] = prop(
        "learned", "learned: the PUQ paper's pixelwise MLP; model_based: Levenberg-Marquardt weighted by 1/SD^2"
    )
    guided: bool = prop(True, "use the per-phase uncertainty (false: equal weights / the unguided MLP, the ablation)")
    sd_with_disagreement: bool = prop(
        True,
        "learned fit: the map SD combines the MC spread with the learned map's distance to the model-based fit of "
        "the same images (grows where the learned fit is doubtful); false: the MC spread alone",
    )
    fit_weights: str = prop(
        "t1",
        "learned fit: t1 or t2 shipped weights, or (site chains only) a fit_weights.pt from qmri train",
        site=True,
        client_choices=MAP_NAMES,
    )


@register(
    "PuqFitGadget",
    PuqFitConfig,
    consumes=(PhaseImages,),
    produces=(PhaseImages, MapImages),
    sends_under=lambda config: (PhaseImages, MapImages) if config.send_phase_images else (MapImages,),
)
def puq_fit(connection: GadgetConnection) -> None:
    """Fit each slice's MC mean images, guided by their uncertainty; the map SD is the spread over the samples."""
    config = PuqFitConfig.from_connection(connection)
    device = str(torch_device(config.device))
    mlp = load_fit_mlp(config.fit_weights, guided=config.guided) if config.fit == "learned" else None
    connection.filter(PhaseImages)
    for item in connection:
        maps = fit_puq_slice(item, config, mlp=mlp, device=device)
        if config.send_phase_images:  # first, so the maps' DICOM can reference them; the samples stay here
            connection.send(dataclasses.replace(item, samples=None))
        connection.send(maps)


def fit_puq_slice(item: PhaseImages, config: PuqFitConfig, *, mlp: FitMlp | None, device: str) -> MapImages:
    """Return the maps of one slice's MC reconstruction.

    Raises
    ------
    ValueError
        If the images carry no MC samples (the reconstruction ran without MC dropout).
    """
    if item.sd is None or item.samples is None:
        raise ValueError(
            f"slice {item.slice}: PuqFitGadget needs the MC samples and their SD; set mc_dropout=true on "
            "PuqReconGadget, or fit a deterministic reconstruction with ParameterFitGadget"
        )
    model = signal_model(protocol_spec(config.model).model)
    start = time.perf_counter()
    maps = fit_guided_maps(
        model,
        item.images,
        item.sd,
        item.samples,
        np.asarray(item.prep_times_ms, dtype=np.float64),
        fit=config.fit,
        guided=config.guided,
        mlp=mlp,
        mask_threshold=config.mask_threshold,
        min_island_pixels=config.min_island_pixels,
        maxima=config.maxima,
        device=device,
        max_iterations=config.max_iterations,
        with_disagreement=config.sd_with_disagreement,
    )
    log.info(
        "slice %d: %s %s fit (%s) of %d pixels and its %d MC samples in %.2f s on %s",
        item.slice,
        "guided" if config.guided else "unguided",
        config.fit,
        model.name,
        int(maps.mask.sum()),
        item.samples.shape[0],
        time.perf_counter() - start,
        device,
    )
    log.info("slice %d: %s", item.slice, describe_rejections(maps))
    return MapImages(
        maps=maps,
        primary_map=model.primary_map,
        model=f"{model.name} PUQ {config.fit}{'' if config.guided else ' unguided'}",
        context=item.context,
    )
