"""``qmri simulate CONTRAST``: a simulated raw file with its truth; the flags are the simulator's settings' fields."""

import argparse
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from gadgets.cli.arguments import CommandParser, Subcommands, add_command
from gadgets.cli.dataclass_flags import DataclassFlags, add_dataclass_flags

if TYPE_CHECKING:
    from qmri_models.simulation.mrf_scan import MrfScanSettings
    from qmri_models.simulation.scan import ScanSettings

_FLAG_NAMES = {"n_coils": "coils", "n_slices": "slices", "n_frames_full": "frames", "n_interleaves": "interleaves"}
"""The settings' fields whose flags have shorter names."""
_CARTESIAN_FIELDS = ("matrix", "n_coils", "acceleration", "acs_fraction", "snr", "seed", "n_slices", "phantom", "noise")
_CARTESIAN_HELP = {
    "matrix": "image size in pixels per side",
    "n_coils": "receive coils",
    "acceleration": "1, 4, 6, 8 or 10 (any integer >= 1 works)",
    "acs_fraction": "fully sampled centre fraction (default: PUQ paper's per acceleration)",
    "snr": "mean tissue signal of the brightest phase / noise SD",
    "noise": "coil noise: correlated between coils with unequal levels, as real arrays, or white",
    "n_slices": "slices, each its own brain slice",
}
_MRF_FIELDS = (
    "matrix",
    "n_coils",
    "n_frames_full",
    "truncation",
    "n_interleaves",
    "ordering",
    "snr",
    "seed",
    "n_slices",
    "schedule_seed",
    "noise",
)


def add_commands(commands: Subcommands) -> None:
    """Add ``simulate`` with one subcommand per contrast: the mapping protocols and ``mrf``."""
    add_command(
        commands, "simulate", "write a simulated multi-phase or spiral MRF raw file with its truth", _add_contrasts
    )


def _add_contrasts(p: argparse.ArgumentParser) -> None:
    from qmri_models.protocols import PROTOCOLS

    contrasts = p.add_subparsers(dest="contrast", required=True, metavar="CONTRAST", parser_class=CommandParser)
    for name, spec in PROTOCOLS.items():
        add_command(contrasts, name, f"{spec.description}, Cartesian multi-phase", _cartesian_arguments)
    add_command(contrasts, "mrf", "spiral FISP fingerprinting (T1 and T2)", _mrf_arguments)


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="raw file to write (ISMRMRD HDF5, the truth in /truth)")


def _cartesian_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.simulation.scan import ScanSettings

    _add_out(p)
    flags = add_dataclass_flags(p, ScanSettings, _CARTESIAN_FIELDS, flag_names=_FLAG_NAMES, help_texts=_CARTESIAN_HELP)
    p.set_defaults(run=partial(_simulate_cartesian, flags))


def _simulate_cartesian(flags: "DataclassFlags[ScanSettings]", args: argparse.Namespace) -> int:
    from qmri_models.simulation.raw_writer import write_raw
    from qmri_models.simulation.scan import simulate_scan

    settings = flags.build(args, contrast=args.contrast)
    write_raw(args.out, settings, simulate_scan(settings))
    print(
        f"{args.out}: {settings.contrast} {settings.phantom}, {settings.n_slices} slice(s), {settings.matrix}^2, "
        f"{settings.n_coils} coils, R={settings.acceleration}, ACS {settings.acs:.2f}, SNR {settings.snr:g}, "
        f"seed {settings.seed}"
    )
    return 0


def _mrf_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.simulation.mrf_scan import MrfScanSettings

    _add_out(p)
    flags = add_dataclass_flags(p, MrfScanSettings, _MRF_FIELDS, flag_names=_FLAG_NAMES)
    p.set_defaults(run=partial(_simulate_mrf, flags))


def _simulate_mrf(flags: "DataclassFlags[MrfScanSettings]", args: argparse.Namespace) -> int:
    from qmri_models.simulation.mrf_raw_writer import write_mrf_raw
    from qmri_models.simulation.mrf_scan import simulate_mrf_scan

    settings = flags.build(args)
    slices = simulate_mrf_scan(settings)
    write_mrf_raw(args.out, settings, slices)
    print(
        f"{args.out}: mrf fisp brain, {settings.n_slices} slice(s), {settings.matrix}^2, {settings.n_coils} coils, "
        f"{settings.n_frames} of {settings.n_frames_full} frames (truncation {settings.truncation}), "
        f"{settings.n_interleaves} interleaves ({settings.ordering}) x {slices[0].coord.shape[1]} samples, "
        f"SNR {settings.snr:g}, seed {settings.seed}"
    )
    return 0
