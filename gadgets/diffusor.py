"""The qMRI Diffusor on the stream: T1, PD and inversion efficiency B generated from a slice's IR images.

The mean of N generations is the map, their SD the map's SD (``sd_kind`` ``diffusion_sd``); every generation's T1
map travels on as the maps' samples (for the structure report's spread), and the Levenberg-Marquardt fit of the same
images as the learned map's model fit (``MapSeriesGadget`` sends it in series 16): the Diffusor's SD says how much its
samples disagree, not how far it has left its training (it reads the 21 ms NIST sphere as hundreds of ms with an SD
of tens), and the fit beside it shows where. Sample count, sampler and steps decide the time per slice (on this
2-core CPU 10 samples of a 160^2 slice take 36 s by 10 DDIM steps, 200 s by 50, and about 68 minutes by the paper's
1000-step DDPM sampler, which is for a GPU; the command that measured them is in ``DDIM_STEPS``' docstring), so only
the site chooses them.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from gadgets.items import MapImages, PhaseImages
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.device import torch_device
from qmri_models.diffusion.schedule import Sampler
from qmri_models.diffusor.model import DDIM_STEPS, Diffusor
from qmri_models.diffusor.scaling import MAP_NAMES
from qmri_models.fitting.maps import MASK_THRESHOLD, MIN_ISLAND_PIXELS, SliceMaps, fit_maps, fit_mask
from qmri_models.fitting.plausibility import MAX_T1_MS, describe_rejections, plausible_maps
from qmri_models.pretrained import load_diffusor, shipped_diffusors
from qmri_models.signal_models import signal_model

log = logging.getLogger(__name__)

UNITS = {"T1": "ms", "PD": "a.u.", "B": "1"}
"""The unit of each generated map."""
TI_TOLERANCE_MS = 1.0
"""How far a scan's inversion time may lie from the one the network was trained for."""


@dataclass(frozen=True)
class DiffusorConfig(GadgetConfig):
    """Properties of DiffusorGadget."""

    weights: str = prop(
        "t1_ir",
        "qMRI Diffusor weights: t1_ir (shipped) or (site chains only) a weights.pt from qmri train diffusor",
        site=True,
        client_choices=tuple(shipped_diffusors()),
    )
    samples: int = prop(
        10, "generations per slice: their mean is the map, their SD its uncertainty", minimum=2, maximum=50, site=True
    )
    sampler: Sampler = prop(
        "ddim",
        "ddim: the few-step deterministic sampler (steps); ddpm: the paper's ancestral sampler over all 1000 "
        "training steps (about 100x the time of 10 DDIM steps)",
        site=True,
    )
    steps: int = prop(
        DDIM_STEPS, "DDIM steps, a divisor of the network's 1000 training steps", minimum=1, maximum=1000, site=True
    )
    stride: int = prop(
        0,
        "pixels between the patches a patch-trained network generates by (at most its patch; smaller: more overlap, "
        "more time); 0: half the patch",
        minimum=0,
        maximum=1024,
        site=True,
    )
    seed: int = prop(0, "seed of the generations (the same seed and images, the same maps)", minimum=0)
    mask_threshold: float = prop(
        MASK_THRESHOLD,
        "pixels whose brightest image is below this fraction of the bright level are background",
        minimum=0.0,
        maximum=0.99,
    )
    min_island_pixels: int = prop(
        MIN_ISLAND_PIXELS,
        "islands of the mask smaller than this (pixels, 8-connected) are background; 1 keeps all",
        minimum=1,
        maximum=1_000_000,
    )
    max_t1_ms: float = prop(
        MAX_T1_MS, "largest plausible T1 (ms): a pixel above it is set to 0", minimum=1.0, maximum=1e5
    )
    model_fit: bool = prop(
        True,
        "also fit |PD (1 - B exp(-TI/T1))| to the same images (Levenberg-Marquardt, about a second per slice) and send "
        "it beside the generated T1 (MapSeriesGadget model_fit_series_index): where the two differ the map is doubtful",
    )
    device: str = prop("auto", "auto (CUDA when present), cpu or cuda")
    send_phase_images: bool = prop(False, "also pass the IR images on (an ImageSeriesGadget downstream sends them)")


@register(
    "DiffusorGadget",
    DiffusorConfig,
    consumes=(PhaseImages,),
    produces=(PhaseImages, MapImages),
    sends_under=lambda config: (PhaseImages, MapImages) if config.send_phase_images else (MapImages,),
)
def diffusor(connection: GadgetConnection) -> None:
    """Generate each slice's T1, PD and B maps with their SD from its IR images."""
    config = DiffusorConfig.from_connection(connection)
    device = str(torch_device(config.device))
    model = load_diffusor(config.weights)
    if config.sampler == "ddim":
        model.schedule.check_ddim_steps(config.steps)  # before any slice arrives
    model.patch_grid(config.stride)  # a stride beyond the patch stops the stream here
    connection.filter(PhaseImages)
    for item in connection:
        maps = diffuse_slice(item, config, model, device=device)
        if config.send_phase_images:
            connection.send(item)
        connection.send(maps)


def diffuse_slice(item: PhaseImages, config: DiffusorConfig, model: Diffusor, *, device: str = "cpu") -> MapImages:
    """Return the maps of one slice's IR images: mean and SD over ``config.samples`` generations.

    Raises
    ------
    ValueError
        If the slice's inversion times are not those the network was trained for.
    """
    times = np.asarray(item.prep_times_ms, dtype=np.float64)
    trained = np.asarray(model.ti_ms)
    if times.shape != trained.shape or np.abs(times - trained).max() > TI_TOLERANCE_MS:
        raise ValueError(
            f"slice {item.slice} has inversion times {', '.join(f'{t:g}' for t in times)} ms but the {config.weights}"
            f" Diffusor was trained for {', '.join(f'{t:g}' for t in trained)} ms; use weights trained on this protocol"
        )
    magnitude = np.abs(item.images)
    mask = fit_mask(magnitude, config.mask_threshold, config.min_island_pixels)
    start = time.perf_counter()
    generated = model.generate_maps(
        magnitude,
        n_samples=config.samples,
        sampler=config.sampler,
        steps=config.steps,
        seed=config.seed,
        stride=config.stride,
        device=device,
    )
    steps = model.schedule.sampler_steps(config.sampler, config.steps)
    log.info(
        "slice %d: %d Diffusor samples (%s, %d steps) in %.1f s on %s",
        item.slice,
        config.samples,
        config.sampler,
        steps,
        time.perf_counter() - start,
        device,
    )
    maps = plausible_maps(
        SliceMaps(
            values={name: np.where(mask, generated.value(name), 0).astype(np.float32) for name in MAP_NAMES},
            sds={name: np.where(mask, generated.spread(name), 0).astype(np.float32) for name in MAP_NAMES},
            units=dict(UNITS),
            mask=mask,
            converged=mask.copy(),
            sd_method=f"SD over {config.samples} Diffusor samples ({config.sampler}, {steps} steps)",
            samples={"T1": np.where(mask, generated.samples[:, MAP_NAMES.index("T1")], 0).astype(np.float32)},
            sd_kind="diffusion_sd",
        ),
        {"T1": config.max_t1_ms},
    )
    if config.model_fit:
        fitted = fit_maps(signal_model("inversion_recovery"), magnitude, times, mask=mask, device=device)
        clamped = np.clip(np.nan_to_num(fitted.values["T1"]), 0, config.max_t1_ms)
        maps = dataclasses.replace(maps, model_fit={"T1": np.where(mask, clamped, 0).astype(np.float32)})
    log.info("slice %d: %s", item.slice, describe_rejections(maps))
    return MapImages(maps=maps, primary_map="T1", model="inversion_recovery", context=item.context)
