"""``qmri evaluate-image-intervals``: conformal intervals on the PUQ phase images, quantile head against baselines."""

import argparse
import sys
from functools import partial
from typing import TYPE_CHECKING

from gadgets.cli.arguments import Subcommands, add_command, user_errors
from gadgets.cli.dataclass_flags import DataclassFlags, add_dataclass_flags

if TYPE_CHECKING:
    from qmri_models.image_interval_evaluation import ImageIntervalStudy

_FIELDS = (
    "map_name",
    "accelerations",
    "matrix",
    "n_train",
    "n_calibration",
    "n_test",
    "mc_samples",
    "alpha",
    "delta",
    "hidden",
    "steps",
    "batch_size",
    "learning_rate",
    "seed",
)
_FLAG_NAMES = {"map_name": "map", "n_train": "train", "n_calibration": "calibration", "n_test": "test"}


def add_commands(commands: Subcommands) -> None:
    """Add ``evaluate-image-intervals``."""
    add_command(
        commands,
        "evaluate-image-intervals",
        "calibrated intervals on the PUQ phase images: a quantile head (pinball loss) against the conformalised "
        "error head and MC SD, on new simulated slices",
        _arguments,
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.image_interval_evaluation import ImageIntervalStudy
    from qmri_models.pretrained import MapName

    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    flags = add_dataclass_flags(p, ImageIntervalStudy, _FIELDS, flag_names=_FLAG_NAMES, names={"MapName": MapName})
    p.set_defaults(run=partial(_evaluate, flags))


def _evaluate(flags: "DataclassFlags[ImageIntervalStudy]", args: argparse.Namespace) -> int:
    from qmri_models.device import torch_device
    from qmri_models.image_interval_evaluation import results_table, run_study

    with user_errors():
        study = flags.build(args)
        device = torch_device(args.device)

    def on_stage(stage: str) -> None:
        if not args.quiet:
            print(stage, file=sys.stderr, flush=True)

    def on_step(step: int, loss: float) -> None:
        if not args.quiet and step % 500 == 0:
            print(f"  step {step}/{study.steps}: pinball loss {loss:.5f}", file=sys.stderr, flush=True)

    with user_errors():  # too few calibration slices for the bound to reach alpha
        results = run_study(study, device=device, on_stage=on_stage, on_step=on_step)
    print(results_table(study, results))
    return 0
