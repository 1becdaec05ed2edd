"""``qmri calibrate``: a calibration file (the interval scale of a mapping chain's map) and its model card.

The flags are the fields of ``gadgets.calibration_run.CalibrationSettings`` (chain, risk, bound, accelerations,
scales) and ``CalibrationData`` (the simulated slices), so every default is written once, there.
"""

import argparse
import shlex
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gadgets.cli.arguments import Subcommands, add_command, user_errors
from gadgets.cli.dataclass_flags import DataclassFlags, add_dataclass_flags

if TYPE_CHECKING:
    from gadgets.calibration_run import CalibrationData, CalibrationSettings

_FLAG_NAMES = {"n_coils": "coils", "n_slices": "slices"}
"""The fields whose flags have shorter names."""
_SETTINGS_FIELDS = (
    "chain",
    "alpha",
    "delta",
    "bound",
    "accelerations",
    "max_scale",
    "scale_step",
    "check_slices",
    "ood_level",
    "quantile_head",
    "keep_maps",
)
_DATA_FIELDS = (
    "n_slices",
    "matrix",
    "n_coils",
    "snr",
    "noise",
    "acs_fraction",
    "slices_per_file",
    "seed",
    "tissues",
)


def add_commands(commands: Subcommands) -> None:
    """Add ``calibrate``."""
    add_command(
        commands,
        "calibrate",
        "calibrate the interval map +- scale * SD (or a quantile head's offsets) of a mapping chain on fresh "
        "simulated slices",
        _arguments,
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    from gadgets.calibration_run import CalibrationData, CalibrationSettings

    p.add_argument(
        "--out", type=Path, required=True, help="calibration file to write (JSON; its model card beside it, .md)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    settings = add_dataclass_flags(p, CalibrationSettings, _SETTINGS_FIELDS, flag_names=_FLAG_NAMES)
    data = add_dataclass_flags(p, CalibrationData, _DATA_FIELDS, flag_names=_FLAG_NAMES)
    p.set_defaults(run=partial(_calibrate, settings, data))


def _calibrate(
    settings_flags: "DataclassFlags[CalibrationSettings]",
    data_flags: "DataclassFlags[CalibrationData]",
    args: argparse.Namespace,
) -> int:
    from gadgets.calibration_run import calibrate_chain, card_path, check_coverage, model_card, pooled_coverage
    from qmri_models.calibration.files import save_interval_calibration

    settings = settings_flags.build(args)
    data = data_flags.build(args)
    recorded = tuple(name for name in _SETTINGS_FIELDS if name != "keep_maps")  # where maps go is no recipe
    command = _command(args, (*recorded, *_DATA_FIELDS))
    with user_errors():  # too few slices for the bound to reach alpha, or too small a largest scale
        calibration = calibrate_chain(settings, data, command=command, progress=not args.quiet)
    checks = (
        check_coverage(
            calibration, n_slices=settings.check_slices, progress=not args.quiet, keep_maps=settings.keep_maps
        )
        if settings.check_slices
        else []
    )
    save_interval_calibration(calibration, args.out)
    card_path(args.out).write_text(model_card(calibration, checks, file_name=args.out.name), encoding="utf-8")
    print(f"{args.out}: {calibration.id}, {calibration.bound} bound, {data.n_slices} slices per acceleration")
    print(f"{'R':>3} {'scale':>6} {'risk':>7} {'UCB':>7}" + (f" {'fresh coverage':>15}" if checks else ""))
    for index, acceleration in enumerate(calibration.accelerations):
        c = calibration.scale_for(acceleration)
        fresh = f" {checks[index].coverage:15.4f}" if checks else ""
        print(f"{acceleration:3d} {c.scale:6.2f} {c.risk:7.4f} {c.risk_ucb:7.4f}{fresh}")
    if checks:
        print(f"fresh coverage, all accelerations: {pooled_coverage(checks):.4f} ({settings.check_slices} slices each)")
    print(f"model card: {card_path(args.out)}")
    return 0


def _command(args: argparse.Namespace, fields: tuple[str, ...]) -> str:
    """Return the ``qmri calibrate`` command line of the parsed arguments, every flag spelt out (reproducible)."""
    words = ["qmri", "calibrate"]
    for name in fields:
        value: Any = getattr(args, name)
        if value is None:
            continue
        words.append(f"--{_FLAG_NAMES.get(name, name).replace('_', '-')}")
        words.extend(map(str, value) if isinstance(value, list | tuple) else [str(value)])
    return shlex.join([*words, "--out", str(args.out)])
