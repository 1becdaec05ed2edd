"""``qmri evaluate-diffusor``: the qMRI Diffusor against the Levenberg-Marquardt fit on held-out simulated IR slices."""

import argparse
import sys
from typing import get_args

from gadgets.cli.arguments import Subcommands, add_command, user_errors

TISSUES = ("white_matter", "grey_matter", "csf")
"""The tissue rows of the brain table."""


def add_commands(commands: Subcommands) -> None:
    """Add ``evaluate-diffusor``."""
    add_command(
        commands,
        "evaluate-diffusor",
        "the qMRI Diffusor against the LM fit: NIST spheres (the paper's Table 1) and brain tissue, on held-out "
        "simulated IR slices",
        _arguments,
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.diffusion.schedule import Sampler
    from qmri_models.diffusor_evaluation import Generation

    defaults = Generation()
    p.add_argument("--weights", default="t1_ir", help="Diffusor weights: a shipped name or a qmri train diffusor file")
    p.add_argument("--snr", type=float, nargs="+", default=[100.0, 30.0], help="SNRs to simulate (default 100 30)")
    p.add_argument("--sphere-slices", type=int, default=1, help="phantom slices per SNR (default 1)")
    p.add_argument("--brain-slices", type=int, default=4, help="brain slices per SNR (default 4)")
    p.add_argument("--matrix", type=int, default=160, help="image size in pixels per side (default 160)")
    p.add_argument("--samples", type=int, default=defaults.n_samples, help="generations N per slice (default 10)")
    p.add_argument("--sampler", choices=get_args(Sampler), default=defaults.sampler, help="default ddim")
    p.add_argument("--steps", type=int, default=defaults.steps, help=f"DDIM steps (default {defaults.steps})")
    p.add_argument(
        "--stride", type=int, default=defaults.stride, help="pixels between patches (default 0: half the patch)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from qmri_models.device import torch_device
    from qmri_models.diffusor_evaluation import Generation, brain_scores, sphere_rows, tissue_table
    from qmri_models.pretrained import load_diffusor

    with user_errors():
        diffusor = load_diffusor(args.weights)
        generation = Generation(args.samples, args.sampler, args.steps, str(torch_device(args.device)), args.stride)
        if args.sampler == "ddim":
            diffusor.schedule.check_ddim_steps(args.steps)  # before any slice
        grid = diffusor.patch_grid(args.stride)
    spheres, brains = [], []
    for snr in args.snr:
        print(f"SNR {snr:g}: {args.sphere_slices} phantom and {args.brain_slices} brain slices", file=sys.stderr)
        spheres += sphere_rows(diffusor, snr, generation, slices=args.sphere_slices, matrix=args.matrix)
        brains += brain_scores(diffusor, snr, generation, slices=args.brain_slices, matrix=args.matrix)
    steps = diffusor.schedule.sampler_steps(args.sampler, args.steps)
    patches = f", {grid.size} px patches every {grid.stride} px" if grid else ""
    print(f"qMRI Diffusor {args.weights}: N={args.samples}, {args.sampler} {steps} steps{patches}, {generation.device}")
    print("\n| SNR | true T1 ms | LM fit: mean (spread) | Diffusor: mean (spread) | Diffusor error | Diffusor SD |")
    print("|---|---|---|---|---|---|")
    for row in sorted(spheres, key=lambda r: (-r.snr, -r.true_t1_ms)):
        error = 100 * (row.diffusor_mean_ms / row.true_t1_ms - 1)
        print(
            f"| {row.snr:g} | {row.true_t1_ms:g} | {row.fit_mean_ms:.1f} ({row.fit_spread_ms:.1f}) "
            f"| {row.diffusor_mean_ms:.1f} ({row.diffusor_spread_ms:.1f}) | {error:+.1f}% | {row.diffusor_sd_ms:.1f} |"
        )
    print("\n| SNR | tissue | LM fit: median APE / NRMSE / SSIM | Diffusor: median APE / NRMSE / SSIM |")
    print("|---|---|---|---|")
    for cells in tissue_table(brains, TISSUES):
        print("| " + " | ".join(cells) + " |")
    pearsons = [b.sd_error_pearson for b in brains if b.sd_error_pearson is not None]
    seconds = [b.diffusor_seconds for b in brains]
    print(
        f"\nDiffusor T1 SD vs |error|, Pearson after blur, mean over brain slices: "
        f"{np.mean(pearsons) if pearsons else float('nan'):.2f}; time per slice {np.mean(seconds):.1f} s"
    )
    return 0
