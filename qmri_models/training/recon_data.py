"""Training examples of the PUQ reconstruction network, made by the simulator.

Each example is one simulated slice: a random brain slice (position, orientation, warp, lesions, tissue values) or,
for a given fraction of the slices, a random sphere phantom (``anatomy.random_sphere_phantom``), random coils, a
random 1D Cartesian mask at one of the accelerations (the PUQ paper's 6/8/10x with its ACS fractions) and noise at
the given SNR. The coil sensitivities are ESPIRiT's from the slice's own calibration lines, exactly as the
reconstruction gadget estimates them on the stream (training on the simulator's true coils would teach the network a
coil combination it never sees at inference), and the target is the noise-free coil images combined with those maps.
K-space and target are scaled together so the zero-filled image's 99th-percentile magnitude is 1 (the network sees
one intensity range whatever the gain); the scale is kept so a reconstruction can be put back in the scanner's units.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qmri_models.networks.mc_sampling import McEstimate, mc_sample
from qmri_models.networks.puq_recon import input_scale
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.pretrained import CONTRAST_OF_MAP, MapName, weights_sha256
from qmri_models.puq_evaluation import combined_truth
from qmri_models.recon.cartesian import calibration_lines, phase_sensitivities
from qmri_models.simulation.anatomy import random_phantom_ranges
from qmri_models.simulation.scan import ScanSettings, simulate_slice
from qmri_models.training.configs import StageOneData

VAL_SEED_OFFSET = 1_000_003
"""Added to a training run's seed for its validation slices, so they are never training slices."""
_PHANTOM_STREAM = 0x5048414E544F4D
"""Second entropy word of the generator that picks the phantom slices, apart from the slices' own generators."""


@dataclass(frozen=True)
class ReconExamples:
    """Stacked training examples; every tensor has the examples first."""

    kdata: torch.Tensor
    """Scaled noisy k-space, zero where not sampled. Shape `(n, phases, coils, ky, kx)` complex64."""
    sampled: torch.Tensor
    """Sampled lines. Shape `(n, phases, ky)` bool."""
    sens: torch.Tensor
    """ESPIRiT coil sensitivities, unit sum of squares in the object. Shape `(n, coils, y, x)` complex64."""
    target: torch.Tensor
    """Scaled noise-free images combined with ``sens``. Shape `(n, phases, y, x)` complex64."""
    tissue: torch.Tensor
    """Tissue mask (label > 0). Shape `(n, y, x)` bool."""
    scale: torch.Tensor
    """Factor the raw k-space was divided by. Shape `(n,)` float32."""
    acceleration: torch.Tensor
    """Acceleration of every example. Shape `(n,)` int64."""
    truth_ms: torch.Tensor | None = None
    """True T1 (``t1``) or T2 (``t2``) in ms, 0 in the background. Shape `(n, y, x)` float32."""

    def __len__(self) -> int:
        return int(self.kdata.shape[0])


def simulate_recon_examples(
    map_name: MapName,
    n_examples: int,
    *,
    matrix: int,
    n_coils: int,
    accelerations: tuple[int, ...],
    snr: float,
    seed: int,
    phantom_fraction: float = 0.0,
    on_example: Callable[[int], None] | None = None,
) -> ReconExamples:
    """Return ``n_examples`` simulated slices for the T1 (MOLLI) or T2 (T2-prep) network.

    Parameters
    ----------
    map_name : ``t1`` or ``t2``.
    n_examples : Number of slices.
    matrix : Image size in pixels per side.
    n_coils : Coils.
    accelerations : Accelerations drawn from, uniformly.
    snr : Signal-to-noise ratio of the simulator (mean tissue signal of the brightest phase over the noise SD).
    seed : Seed of everything (anatomy, coils, masks, noise, accelerations, which slices are phantoms).
    phantom_fraction : Fraction of the slices that are random sphere phantoms (``phantom_slices``), the rest brain.
    on_example : Called with the number of examples made so far (progress).

    Returns
    -------
    The stacked, scaled examples.
    """
    if map_name not in CONTRAST_OF_MAP:
        raise ValueError(f"map_name must be t1 or t2, got {map_name!r}")
    if n_examples < 1:
        raise ValueError(f"n_examples must be at least 1, got {n_examples}")
    sequences = np.random.SeedSequence(seed).spawn(n_examples)
    phantoms = phantom_slices(n_examples, phantom_fraction, seed)
    names = ("kdata", "sampled", "sens", "target", "tissue", "accel", "truth")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for index, sequence in enumerate(sequences):
        rng = np.random.default_rng(sequence)
        acceleration = int(rng.choice(accelerations))
        settings = ScanSettings(
            contrast=CONTRAST_OF_MAP[map_name],
            matrix=matrix,
            n_coils=n_coils,
            acceleration=acceleration,
            snr=snr,
            phantom="random_spheres" if phantoms[index] else "brain",
            noise="white",  # the networks see prewhitened data (NoiseAdjustGadget): white noise
        )
        simulated = simulate_slice(settings, rng)
        maps = phase_sensitivities(simulated.kdata, calibration_lines(simulated.sampled))
        parts["kdata"].append(simulated.kdata)
        parts["sampled"].append(simulated.sampled)
        parts["sens"].append(maps)
        parts["target"].append(combined_truth(simulated, maps))
        parts["tissue"].append(simulated.truth.labels > 0)
        parts["accel"].append(np.asarray(acceleration))
        parts["truth"].append(simulated.truth.t1_ms if map_name == "t1" else simulated.truth.t2_ms)
        if on_example is not None:
            on_example(index + 1)
    kdata = torch.from_numpy(np.stack(parts["kdata"]))
    sens = torch.from_numpy(np.stack(parts["sens"]))
    scale = input_scale(kdata, sens)
    return ReconExamples(
        kdata=kdata / scale[:, None, None, None, None],
        sampled=torch.from_numpy(np.stack(parts["sampled"])),
        sens=sens,
        target=torch.from_numpy(np.stack(parts["target"])) / scale[:, None, None, None],
        tissue=torch.from_numpy(np.stack(parts["tissue"])),
        scale=scale.to(torch.float32),
        acceleration=torch.from_numpy(np.stack(parts["accel"])).to(torch.int64),
        truth_ms=torch.from_numpy(np.stack(parts["truth"]).astype(np.float32)),
    )


def phantom_slices(n_examples: int, phantom_fraction: float, seed: int) -> np.ndarray:
    """Return which of ``n_examples`` slices drawn from ``seed`` are phantoms. Shape `(n_examples,)` bool.

    ``phantom_fraction`` of them, rounded to whole slices, at places drawn from ``seed`` (the same seed, the same
    places); fraction 0 draws nothing.
    """
    if not 0.0 <= phantom_fraction <= 1.0:
        raise ValueError(f"phantom_fraction must lie in [0, 1], got {phantom_fraction}")
    chosen = np.zeros(n_examples, dtype=bool)
    n_phantoms = int(np.floor(phantom_fraction * n_examples + 0.5))
    if n_phantoms > 0:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _PHANTOM_STREAM]))
        chosen[rng.choice(n_examples, size=n_phantoms, replace=False)] = True
    return chosen


def mc_estimates(
    network: UnrolledRecon, examples: ReconExamples, *, n_samples: int, device: torch.device
) -> Iterator[McEstimate]:
    """Yield the MC-dropout estimate of every example in turn, in the examples' scaled units, on ``device``.

    Parameters
    ----------
    network : The reconstruction network, on ``device``.
    examples : The slices.
    n_samples : MC samples T per slice.
    device : Where the network runs.
    """
    for i in range(len(examples)):
        yield mc_sample(
            network,
            examples.kdata[i].to(device),
            examples.sampled[i].to(device),
            examples.sens[i].to(device),
            n_samples=n_samples,
        )


def stage_one_recipe(data: StageOneData) -> dict[str, Any]:
    """Return what decides the stage-1 output of ``data``: the simulation, the MC samples and the weights' digest."""
    names = ("map_name", "n_train", "n_val", "matrix", "n_coils", "snr", "mc_samples", "phantom_fraction", "seed")
    recipe: dict[str, Any] = {name: getattr(data, name) for name in names}
    recipe["accelerations"] = list(data.accelerations)
    recipe["recon_sha256"] = weights_sha256("recon", data.recon_weights)
    return recipe | phantom_recipe(data.phantom_fraction)


def phantom_recipe(phantom_fraction: float) -> dict[str, Any]:
    """Return what decides a training set's phantom slices beyond their fraction (empty without phantom slices).

    That is the ranges their values are drawn from (``anatomy.random_phantom_ranges``), under ``phantom_ranges``.
    """
    return {"phantom_ranges": random_phantom_ranges()} if phantom_fraction > 0 else {}


def simulate_stage_one(data: StageOneData, split: str) -> ReconExamples:
    """Return the slices of ``split`` (``train`` or ``val``, the latter with its own seeds) of ``data``."""
    n_examples, seed = _split_size_and_seed(data, split)
    return simulate_recon_examples(
        data.map_name,
        n_examples,
        matrix=data.matrix,
        n_coils=data.n_coils,
        accelerations=data.accelerations,
        snr=data.snr,
        seed=seed,
        phantom_fraction=data.phantom_fraction,
    )


def stage_one_phantoms(data: StageOneData, split: str) -> np.ndarray:
    """Return which slices of ``simulate_stage_one(data, split)`` are phantoms. Shape `(slices,)` bool."""
    n_examples, seed = _split_size_and_seed(data, split)
    return phantom_slices(n_examples, data.phantom_fraction, seed)


def _split_size_and_seed(data: StageOneData, split: str) -> tuple[int, int]:
    """Return the number of slices and the seed of ``split`` (``train`` or ``val``) of ``data``."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    if split == "train":
        return data.n_train, data.seed
    return data.n_val, data.seed + VAL_SEED_OFFSET
