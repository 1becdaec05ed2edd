"""PUQ stage 1 on the stream: each buffered slice through the trained unrolled network, MC dropout on.

The per-phase uncertainty sent on is the error head's predicted error SD when the weights carry one (the shipped
weights do), else the SD over the MC samples (``qmri_models.networks.mc_sampling.McEstimate.uncertainty``).
"""

import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from gadgets.items import PhaseImages, SliceBuffer
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.device import torch_device
from qmri_models.networks.puq_recon import deterministic_reconstruct, puq_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.pretrained import MAP_NAMES, load_recon_network
from qmri_models.recon.cartesian import calibration_lines, crop_readout, phase_sensitivities

log = logging.getLogger(__name__)

MAX_MC_SAMPLES = 200
"""Most MC samples a chain may ask for per slice: about 50 s of a 160^2 slice on 2 CPU cores (bench/bench_puq.py
measured 246 ms per sample); the paper's T=100 and twice that for a site that wants it."""


@dataclass(frozen=True)
class PuqReconConfig(GadgetConfig):
    """Properties of PuqReconGadget."""

    weights: str = prop(
        "t1",
        "network: t1 (MOLLI) or t2 (T2-prep) shipped weights, or (site chains only) a weights.pt from qmri train",
        site=True,
        client_choices=MAP_NAMES,
    )
    mc_samples: int = prop(
        100,
        "MC-dropout samples T per slice (2 CPU cores: about 0.25 s each at 160^2, bench/bench_puq.py)",
        minimum=2,
        maximum=MAX_MC_SAMPLES,
    )
    mc_dropout: bool = prop(True, "sample with dropout on (PUQ); false: one pass with dropout off, no uncertainty")
    mc_seed: int = prop(
        0,
        "seed of the dropout masks, mixed with the measurement ID and slice index so that replay, stream and serve "
        "give the same maps; -1: unseeded",
        minimum=-1,
        maximum=2**31 - 1,
    )
    batch_size: int = prop(0, "MC samples per forward pass; 0: sized to free memory on CUDA, 1 on the CPU", minimum=0)
    device: str = prop("auto", "auto (CUDA when present), cpu or cuda")


@register("PuqReconGadget", PuqReconConfig, consumes=(SliceBuffer,), produces=(PhaseImages,))
def puq_recon(connection: GadgetConnection) -> None:
    """Reconstruct each slice with the PUQ network: MC mean images, per-phase uncertainty, samples for the fit."""
    config = PuqReconConfig.from_connection(connection)
    device = torch_device(config.device)
    network = load_recon_network(config.weights).to(device)
    connection.filter(SliceBuffer)
    for item in connection:
        if item.kdata.shape[0] != network.n_phases:
            raise ValueError(
                f"slice {item.slice} has {item.kdata.shape[0]} phases but the {config.weights} network was trained "
                f"for {network.n_phases}; use weights trained on this protocol"
            )
        lines = calibration_lines(item.sampled, item.calibration_lines)
        if lines.size == 0:
            raise ValueError(f"slice {item.slice}: no calibration lines (ACS) for the ESPIRiT maps the network needs")
        start = time.perf_counter()
        sens = phase_sensitivities(item.kdata, lines)
        seed = slice_seed(config.mc_seed, connection.header, item.slice)
        images, sd, samples = _reconstruct(network, item, sens, config, str(device), seed)
        log.info(
            "slice %d: PUQ reconstruction, %s in %.1f s on %s",
            item.slice,
            f"{config.mc_samples} MC samples" if config.mc_dropout else "dropout off",
            time.perf_counter() - start,
            device,
        )
        connection.send(
            PhaseImages(
                images=np.asarray(images, np.complex64),
                prep_times_ms=item.prep_times_ms,
                context=item.context,
                sens=crop_readout(sens, item.recon_matrix[1]),
                sd=None if sd is None else np.asarray(sd, np.float32),
                samples=samples,
            )
        )


def slice_seed(mc_seed: int, header: Any, slice_index: int) -> int | None:
    """Return the seed of one slice's dropout masks: the same for the same scan, property and slice, wherever run.

    Parameters
    ----------
    mc_seed : The gadget's ``mc_seed`` property (-1: unseeded).
    header : The stream's ISMRMRD header (its measurement ID, when it has one, tells scans apart).
    slice_index : The slice.

    Returns
    -------
    A seed in [0, 2^63), or None when unseeded.
    """
    if mc_seed < 0:
        return None
    info = header.measurementInformation
    measurement = (info.measurementID if info is not None else None) or ""
    entropy = [mc_seed, slice_index, zlib.crc32(measurement.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _reconstruct(
    network: UnrolledRecon, item: SliceBuffer, sens: np.ndarray, config: PuqReconConfig, device: str, seed: int | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Return the slice's images, per-phase uncertainty and samples (None without MC), readout oversampling removed."""
    n_x = item.recon_matrix[1]
    if not config.mc_dropout:
        images = deterministic_reconstruct(network, item.kdata, item.sampled, sens, device=device)
        return crop_readout(images.cpu().numpy(), n_x), None, None
    estimate = puq_reconstruct(
        network,
        item.kdata,
        item.sampled,
        sens,
        n_samples=config.mc_samples,
        device=device,
        batch_size=config.batch_size or None,
        keep_samples=True,
        seed=seed,
    )
    samples = None if estimate.samples is None else crop_readout(estimate.samples.cpu().numpy(), n_x)
    uncertainty = crop_readout(estimate.uncertainty.cpu().numpy(), n_x)
    return crop_readout(estimate.mean.cpu().numpy(), n_x), uncertainty, samples
