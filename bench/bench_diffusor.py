"""qMRI Diffusor: time per slice of N generations with the few-step DDIM sampler and the paper's DDPM sampler.

What it measures
----------------
``Diffusor.generate_maps`` on one simulated IR slice (``--matrix``, 7 TIs) with ``--samples`` generations as one
batch, on ``--device``: DDIM with each step count of ``--ddim-steps``, then the ancestral DDPM sampler over all 1000
training steps. The network is ``--weights`` (a weights file of ``qmri train diffusor`` or a shipped name), or,
without it, an untrained one of ``DiffusorTrainingConfig``'s default size: the time does not depend on the weights.
On a CPU the full DDPM run takes long; ``--ddpm-timed-steps K`` times its first K steps and scales to 1000 (said so
in the table). Each row is printed with the ratio to the first DDIM row, timed in the same process after one untimed
warm-up step.

With ``--quality-crop C`` it then compares what the samplers make, on ``--quality-slices`` slices and two C x C
crops of each (the centre, and the centre moved up by 3/8 of C, which takes in more cortex; one patch of the shipped
network at C 64, so the full DDPM run fits a CPU): the T1 NRMSE of the mean of the N generations of each DDIM step
count and of the full 1000-step DDPM sampler against the simulated truth, in the object and in its tissue below
``TISSUE_MAX_T1_MS`` (white and grey matter, without the CSF whose few pixels, where the map scaling is flat,
dominate the object's figure), averaged over the crops, with the ratio to DDPM's. With N generations the mean map
keeps sampling noise of about SD / sqrt(N), a few percent of the NRMSE at N=10: ratios within that are ties.

Run it with::

    cd /work/main && .venv/bin/python bench/bench_diffusor.py [--matrix 160] [--samples 10] [--ddim-steps 10 20 50] \
        [--ddpm-timed-steps 1000] [--device auto] [--weights FILE] [--quality-crop 64] [--quality-slices 3]
"""

import argparse
import dataclasses

import numpy as np
import torch
from bench_common import clock, cpu_name, print_rows

from qmri_models.device import torch_device
from qmri_models.diffusion.denoiser import ConditionalDenoiser
from qmri_models.diffusion.schedule import Sampler
from qmri_models.diffusor.model import Diffusor
from qmri_models.metrics import nrmse
from qmri_models.pretrained import load_diffusor
from qmri_models.protocols import IR_TI_MS
from qmri_models.training.configs import DiffusorTrainingConfig
from qmri_models.training.diffusor_data import IrExamples, simulate_ir_examples
from qmri_models.training.train_diffusor import denoiser_config, noise_schedule, training_patch

TISSUE_MAX_T1_MS = 2000.0
"""Pixels of the sampler comparison's tissue column: true T1 below this (ms)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--ddpm-timed-steps", type=int, default=1000, help="DDPM steps timed (scaled to 1000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", help="a Diffusor weights file or shipped name (default: untrained, default size)")
    parser.add_argument(
        "--quality-crop",
        type=int,
        default=0,
        help="side of the crops the samplers' T1 NRMSE is compared on, against the full DDPM sampler's "
        "(0: no comparison)",
    )
    parser.add_argument("--quality-slices", type=int, default=3, help="slices of the sampler comparison")
    return parser.parse_args()


def default_size_diffusor() -> Diffusor:
    """Return an untrained Diffusor of the default training configuration's size."""
    config = DiffusorTrainingConfig()
    denoiser = ConditionalDenoiser(denoiser_config(config))
    return Diffusor(denoiser, noise_schedule(config), IR_TI_MS, training_patch(config))


class _EnoughStepsError(Exception):
    """Raised from the progress callback once the steps to time are done."""


def seconds_per_step(
    diffusor: Diffusor,
    magnitude: np.ndarray,
    args: argparse.Namespace,
    device: torch.device,
    sampler: str,
    steps: int,
    stop_after: int | None = None,
) -> tuple[float, int]:
    """Return the wall time per denoising step of one generation run and the steps it timed."""
    done = {"n": 0, "end": 0.0}

    def on_step(step: int, total: int) -> None:
        done["n"] = step
        if stop_after is not None and step >= stop_after:
            done["end"] = clock(device)
            raise _EnoughStepsError

    start = clock(device)
    try:
        diffusor.generate_maps(
            magnitude, n_samples=args.samples, sampler=sampler, steps=steps, device=device, on_step=on_step
        )  # type: ignore[arg-type]
        done["end"] = clock(device)
    except _EnoughStepsError:
        pass
    return (done["end"] - start) / done["n"], done["n"]


def main() -> None:
    args = parse_args()
    device = torch_device(args.device)
    diffusor = load_diffusor(args.weights) if args.weights else default_size_diffusor()
    size = dataclasses.asdict(diffusor.denoiser.config)
    example = simulate_ir_examples(
        max(1, args.quality_slices),
        matrix=args.matrix,
        snr_range=(30.0, 30.0),
        phantom_fraction=0.0,
        efficiency_range=(0.9, 0.9),
        seed=7,
    )
    magnitude = example.condition[0].numpy()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    print(f"qMRI Diffusor, {args.matrix}^2 slice, N={args.samples} generations as one batch, on {where}")
    print(
        f"network: channels {size['channels']}, res blocks {size['res_blocks']}"
        f" ({'untrained, default size' if not args.weights else args.weights})"
    )
    seconds_per_step(diffusor, magnitude, args, device, "ddim", 1)  # warm-up
    rows, baseline = [], None
    for steps in args.ddim_steps:
        per_step, _ = seconds_per_step(diffusor, magnitude, args, device, "ddim", steps)
        total = per_step * steps
        baseline = baseline or total
        rows.append((f"DDIM {steps} steps", f"{total:.1f}", f"{per_step * 1000:.0f}", f"{total / baseline:.2f}"))
    timed = min(args.ddpm_timed_steps, 1000)
    per_step, n = seconds_per_step(diffusor, magnitude, args, device, "ddpm", 1000, stop_after=timed)
    label = "DDPM 1000 steps" + ("" if n == 1000 else f" (first {n} timed, scaled)")
    rows.append((label, f"{per_step * 1000:.1f}", f"{per_step * 1000:.0f}", f"{per_step * 1000 / baseline:.2f}"))
    print_rows(("sampler", "s per slice", "ms per step", f"vs DDIM {args.ddim_steps[0]}"), rows)
    if args.quality_crop:
        headers = ("sampler", "T1 NRMSE, object", "vs DDPM", f"T1 NRMSE, T1 < {TISSUE_MAX_T1_MS:g} ms", "vs DDPM")
        print_rows(headers, sampler_quality(diffusor, example, args, device))


def quality_windows(matrix: int, crop: int) -> list[tuple[int, int]]:
    """Return the top-left corners of the comparison's crops of a slice: its centre, and the centre moved up."""
    centre = (matrix - crop) // 2
    return [(centre, centre), (max(0, centre - 3 * crop // 8), centre)]


def sampler_quality(
    diffusor: Diffusor, example: IrExamples, args: argparse.Namespace, device: torch.device
) -> list[tuple[str, ...]]:
    """Return the rows of the sampler comparison: T1 NRMSE of the mean map, each sampler, in the object and in its
    tissue below ``TISSUE_MAX_T1_MS``, averaged over the crops of ``quality_windows``."""
    runs: list[tuple[Sampler, int]] = [("ddim", steps) for steps in args.ddim_steps] + [("ddpm", 1000)]
    scores: dict[tuple[Sampler, int], list[list[float]]] = {run: [] for run in runs}
    pixels = [0, 0]
    crop = args.quality_crop
    for index in range(args.quality_slices):
        for top, left in quality_windows(args.matrix, crop):
            window = (..., slice(top, top + crop), slice(left, left + crop))
            magnitude = example.condition[index][window].numpy()
            truth, mask = example.maps[index, 0][window].numpy(), example.mask[index][window].numpy()
            tissue = mask & (truth < TISSUE_MAX_T1_MS)
            pixels = [pixels[0] + int(mask.sum()), pixels[1] + int(tissue.sum())]
            for sampler, steps in runs:
                maps = diffusor.generate_maps(
                    magnitude, n_samples=args.samples, sampler=sampler, steps=steps, device=device
                )
                scores[(sampler, steps)].append([nrmse(maps.value("T1"), truth, where) for where in (mask, tissue)])
    means = {run: np.mean(values, axis=0) for run, values in scores.items()}
    ddpm = means[("ddpm", 1000)]
    print(
        f"\nsamplers on {len(scores[runs[0]])} crops of {crop}^2 pixels from {args.quality_slices} slices "
        f"({pixels[0]} pixels in the object, {pixels[1]} below {TISSUE_MAX_T1_MS:g} ms), N={args.samples}, "
        "NRMSE averaged over the crops"
    )
    rows = []
    for (sampler, steps), (obj, kept) in means.items():
        cells = (f"{obj:.4f}", f"{obj / ddpm[0]:.3f}", f"{kept:.4f}", f"{kept / ddpm[1]:.3f}")
        rows.append((f"{sampler.upper()} {steps} steps", *cells))
    return rows


if __name__ == "__main__":
    main()
