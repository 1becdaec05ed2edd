"""``qmri evaluate-uncertainty``: a mapping chain's calibrated intervals scored on fresh simulated slices."""

import argparse
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, get_args

from gadgets.cli.arguments import Subcommands, add_command, positive_int, user_errors


def add_commands(commands: Subcommands) -> None:
    """Add ``evaluate-uncertainty``."""
    add_command(
        commands,
        "evaluate-uncertainty",
        "coverage, width and width-error correlation of a chain's calibrated intervals on fresh slices",
        _arguments,
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    from gadgets.calibration_run import CalibratedChain
    from gadgets.uncertainty_evaluation import DEFAULT_SLICES, EVALUATION_SEED, SPHERE_SEED

    p.add_argument("--chain", required=True, choices=get_args(CalibratedChain), help="the shipped mapping chain")
    p.add_argument(
        "--calibration",
        help="its calibration: a shipped name or a file of qmri calibrate (default: the one the chain's "
        "MapIntervalGadget uses)",
    )
    p.add_argument(
        "--accelerations", type=positive_int, nargs="+", help="accelerations to evaluate (default: the calibrated)"
    )
    p.add_argument("--slices", type=positive_int, default=DEFAULT_SLICES, help="fresh slices per acceleration")
    p.add_argument("--matrix", type=positive_int, help="image size (default: the calibration's)")
    p.add_argument(
        "--seed", type=int, help=f"base seed of the fresh slices (default {EVALUATION_SEED}, spheres {SPHERE_SEED})"
    )
    p.add_argument(
        "--phantom",
        choices=("brain", "spheres"),
        default="brain",
        help="brain: fresh brain slices (coverage, width, correlations); spheres: the NIST-like sphere phantom, "
        "every sphere's error, SD, flag and interval",
    )
    p.add_argument("--out", type=Path, help="also write the figures, every structure included, as JSON")
    p.add_argument(
        "--keep-maps",
        type=Path,
        help="brain: keep the replayed maps in this folder, and reuse those of the same chain and slices from it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_evaluate_uncertainty)


def _evaluate_uncertainty(args: argparse.Namespace) -> int:
    from gadgets.calibration_run import chain_calibration
    from gadgets.uncertainty_evaluation import (
        EVALUATION_SEED,
        SPHERE_SEED,
        evaluate_spheres,
        evaluate_uncertainty,
        report_json,
        report_table,
        sphere_table,
    )
    from qmri_models.calibration.files import load_interval_calibration

    with user_errors():  # a calibration file that is not one, an acceleration it does not cover, a bad seed
        calibration_name = args.calibration or chain_calibration(args.chain)
        calibration = load_interval_calibration(calibration_name)
        if calibration.chain != args.chain:
            raise ValueError(f"calibration {calibration.id!r} is of chain {calibration.chain!r}, not {args.chain!r}")
        if args.phantom == "spheres":
            seed = SPHERE_SEED if args.seed is None else args.seed
            accelerations = args.accelerations or calibration.accelerations
            spheres = evaluate_spheres(
                calibration,
                accelerations=accelerations,
                n_slices=args.slices,
                matrix=args.matrix,
                seed=seed,
                progress=not args.quiet,
            )
            print(sphere_table(calibration, spheres))
            if args.out is not None:
                rows = [dataclasses.asdict(r) | {"error_percent": r.error_percent} for r in spheres]
                _write_json(args.out, {"seed": seed, "spheres": rows})
            return 0
        seed = EVALUATION_SEED if args.seed is None else args.seed
        reports = evaluate_uncertainty(
            calibration,
            accelerations=args.accelerations or calibration.accelerations,
            n_slices=args.slices,
            matrix=args.matrix,
            seed=seed,
            progress=not args.quiet,
            keep_maps=args.keep_maps,
        )
    print(report_table(calibration, reports))
    if args.out is not None:
        words = ["qmri", "evaluate-uncertainty", "--chain", args.chain, "--calibration", calibration_name]
        words += ["--accelerations", *(str(r.pixels.acceleration) for r in reports), "--slices", str(args.slices)]
        words += [*(["--matrix", str(args.matrix)] if args.matrix else []), "--seed", str(seed)]
        _write_json(args.out, report_json(calibration, reports, command=shlex.join(words), seed=seed))
    return 0


def _write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON (no NaN) to ``path``, its folder made if missing, and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"written: {path}")
