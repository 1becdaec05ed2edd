"""``qmri train NETWORK`` (the flags are the training configurations' fields) and ``qmri evaluate-puq``."""

import argparse
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gadgets.cli.arguments import CommandParser, Subcommands, add_command, user_errors
from gadgets.cli.dataclass_flags import DataclassFlags, add_dataclass_flags

if TYPE_CHECKING:
    from qmri_models.training.configs import (
        DiffusorTrainingConfig,
        ErrorHeadTrainingConfig,
        FitTrainingConfig,
        ReconTrainingConfig,
    )
    from qmri_models.training.train_map_quantile_head import QuantileHeadTraining

T = TypeVar("T")

_FLAG_NAMES = {"map_name": "map", "n_coils": "coils", "n_iterations": "iterations"}
"""The configurations' fields whose flags have shorter names."""
_RECON_FIELDS = (
    "map_name",
    "n_train",
    "n_val",
    "matrix",
    "n_coils",
    "accelerations",
    "phantom_fraction",
    "n_iterations",
    "hidden",
    "dropout",
    "steps",
    "batch_size",
    "learning_rate",
    "validate_every",
    "seed",
)
_RECON_HELP = {
    "n_train": "simulated training slices",
    "n_val": "simulated validation slices (their own seeds)",
    "n_iterations": "unrolled iterations",
    "hidden": "hidden channels of every denoiser",
}
_DIFFUSOR_FIELDS = (
    "n_train",
    "n_val",
    "matrix",
    "crop",
    "snr_range",
    "phantom_fraction",
    "efficiency_range",
    "channels",
    "res_blocks",
    "norm_groups",
    "head_channels",
    "prediction",
    "steps",
    "batch_size",
    "learning_rate",
    "validate_every",
    "seed",
)
_STAGE_ONE_FIELDS = ("map_name", "n_train", "n_val", "matrix", "accelerations", "mc_samples", "phantom_fraction")
"""The fields of ``StageOneData`` (the stage-1 data recipe) that ``puq-fit`` and ``puq-error-head`` share."""
_STAGE_ONE_HELP = {
    "n_train": "simulated training slices (their own seeds)",
    "n_val": "simulated validation slices",
}


def add_commands(commands: Subcommands) -> None:
    """Add ``train`` with one subcommand per network, and ``evaluate-puq``."""
    add_command(commands, "train", "train a network on simulated data (checkpoints; rerun to resume)", _add_networks)
    add_command(
        commands,
        "evaluate-puq",
        "PUQ against its baselines on held-out simulated slices (table)",
        _evaluate_puq_arguments,
    )


def _add_networks(p: argparse.ArgumentParser) -> None:
    networks = p.add_subparsers(dest="network", required=True, metavar="NETWORK", parser_class=CommandParser)
    add_command(
        networks, "puq-recon", "PUQ's unrolled reconstruction network with MC dropout", _train_puq_recon_arguments
    )
    add_command(
        networks,
        "puq-fit",
        "PUQ's learned fit (MLP), guided and unguided, on stage-1 output",
        _train_puq_fit_arguments,
    )
    add_command(
        networks,
        "puq-error-head",
        "an error head on a trained puq-recon network: its per-phase uncertainty",
        _train_puq_error_head_arguments,
    )
    add_command(
        networks,
        "map-quantile-head",
        "a mapping chain's map quantile head (pinball loss) on maps it makes of simulated slices",
        _train_map_quantile_head_arguments,
    )
    add_command(
        networks,
        "diffusor",
        "the qMRI Diffusor: T1, PD and B from IR images by a conditional DDPM",
        _train_diffusor_arguments,
    )
    add_command(
        networks,
        "puq-ship",
        "copy trained PUQ weights into qmri_models/pretrained with a model card",
        _ship_puq_arguments,
    )
    add_command(
        networks,
        "diffusor-ship",
        "copy trained qMRI Diffusor weights into qmri_models/pretrained with a model card",
        _ship_diffusor_arguments,
    )


def _add_run_options(p: argparse.ArgumentParser, out: str) -> None:
    """Add what every training takes besides its configuration: the run folder, the device, quiet."""
    p.add_argument("--out", type=Path, required=True, help=f"run folder: {out}")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _map_names() -> dict[str, object]:
    """Return the names the configurations' annotations import for type checking only (the map names)."""
    from qmri_models.pretrained import MapName

    return {"MapName": MapName}


def _train_puq_recon_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.training.configs import ReconTrainingConfig

    _add_run_options(p, "examples, checkpoint, weights, history")
    flags = add_dataclass_flags(
        p, ReconTrainingConfig, _RECON_FIELDS, flag_names=_FLAG_NAMES, help_texts=_RECON_HELP, names=_map_names()
    )
    p.set_defaults(run=partial(_train_puq_recon, flags))


def _train_puq_recon(flags: "DataclassFlags[ReconTrainingConfig]", args: argparse.Namespace) -> int:

    from qmri_models.device import torch_device
    from qmri_models.training.train_recon import train_recon

    config = flags.build(args)
    with user_errors():
        device = torch_device(args.device)
    with _loss_bar(config.steps, f"train puq-recon {config.map_name}", quiet=args.quiet) as on_step, user_errors():
        history = train_recon(config, args.out, device=device, on_step=on_step)  # user error: another run's folder
    print(
        f"{args.out}: {config.steps} steps in {history.wall_s:.0f} s; validation NRMSE {history.val_nrmse[-1]:.4f} "
        f"(zero-filled {history.val_zero_filled_nrmse:.4f}); weights in {args.out / 'weights.pt'}"
    )
    return 0


def _add_stage_one_flags(
    p: argparse.ArgumentParser, cls: type[T], fields: tuple[str, ...], help_texts: dict[str, str]
) -> DataclassFlags[T]:
    """Add the flags of a trainer on stage-1 output: the stage-1 network, the shared data recipe, then ``fields``."""
    p.add_argument("--recon-weights", help="stage-1 network: t1, t2 (shipped) or a weights.pt (default: --map)")
    return add_dataclass_flags(
        p,
        cls,
        (*_STAGE_ONE_FIELDS, *fields, "seed"),
        flag_names=_FLAG_NAMES,
        help_texts=_STAGE_ONE_HELP | help_texts,
        names=_map_names(),
    )


def _stage_one_config(flags: DataclassFlags[T], args: argparse.Namespace) -> T:
    """Return a stage-1 trainer's configuration; the stage-1 network defaults to the shipped one of the map."""
    return flags.build(args, recon_weights=str(args.recon_weights or args.map_name))


@contextmanager
def _loss_bar(total: int, desc: str, *, quiet: bool) -> Iterator[Callable[[int, float], None]]:
    """Yield an ``on_step(step, loss)`` that moves one tqdm bar over ``total`` steps with the loss beside it."""
    from tqdm import tqdm

    with tqdm(total=total, unit="step", desc=desc, disable=quiet) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            bar.refresh()

        yield on_step


@contextmanager
def _stage_bars(prefix: str, *, quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Yield an ``on_progress(stage, done, total)`` that keeps one tqdm bar per stage; close them all at the end."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, unit="", desc=f"{prefix} {stage}", disable=quiet))
        bar.n = done
        bar.refresh()

    try:
        yield on_progress
    finally:
        for bar in bars.values():
            bar.close()


def _train_puq_fit_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.training.configs import FitTrainingConfig

    _add_run_options(p, "pixel caches, checkpoint, weights, history")
    flags = _add_stage_one_flags(
        p, FitTrainingConfig, ("epochs", "loss"), {"mc_samples": "MC samples per slice for the stage-1 SD"}
    )
    p.set_defaults(run=partial(_train_puq_fit, flags))


def _train_puq_fit(flags: "DataclassFlags[FitTrainingConfig]", args: argparse.Namespace) -> int:
    from qmri_models.device import torch_device
    from qmri_models.training.train_fit import train_fit

    config = _stage_one_config(flags, args)
    with user_errors():
        device = torch_device(args.device)
    with _stage_bars(f"puq-fit {config.map_name}", quiet=args.quiet) as on_progress, user_errors():
        history = train_fit(config, args.out, device=device, on_progress=on_progress)
    print(
        f"{args.out}: {config.epochs} epochs on {history.n_train_pixels} pixels in {history.wall_s:.0f} s; validation "
        f"RMSE {history.val_rmse_guided_ms[-1]:.1f} ms guided, {history.val_rmse_unguided_ms[-1]:.1f} ms unguided; "
        f"weights in {args.out / 'fit_weights.pt'}"
    )
    return 0


def _train_diffusor_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.training.configs import DiffusorTrainingConfig

    _add_run_options(p, "examples, checkpoint, weights, history")
    flags = add_dataclass_flags(
        p,
        DiffusorTrainingConfig,
        _DIFFUSOR_FIELDS,
        help_texts={"n_train": "simulated training slices", "n_val": "simulated validation slices (their own seeds)"},
    )
    p.set_defaults(run=partial(_train_diffusor, flags))


def _train_diffusor(flags: "DataclassFlags[DiffusorTrainingConfig]", args: argparse.Namespace) -> int:

    from qmri_models.device import torch_device
    from qmri_models.training.train_diffusor import WEIGHTS, train_diffusor

    with user_errors():
        config = flags.build(args)
        device = torch_device(args.device)
    with _loss_bar(config.steps, "train diffusor", quiet=args.quiet) as on_step, user_errors():
        history = train_diffusor(config, args.out, device=device, on_step=on_step)  # user error: another run's folder
    print(
        f"{args.out}: {config.steps} steps in {history.wall_s:.0f} s; validation loss {history.val_loss[-1]:.4f}, "
        f"T1 NRMSE {history.val_t1_nrmse[-1]:.4f}; weights in {args.out / WEIGHTS}"
    )
    return 0


def _train_puq_error_head_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.training.configs import ErrorHeadTrainingConfig

    _add_run_options(p, "example caches, checkpoint, weights, history")
    flags = _add_stage_one_flags(
        p, ErrorHeadTrainingConfig, ("hidden", "steps"), {"hidden": "hidden channels of the head"}
    )
    p.set_defaults(run=partial(_train_puq_error_head, flags))


def _train_puq_error_head(flags: "DataclassFlags[ErrorHeadTrainingConfig]", args: argparse.Namespace) -> int:
    from qmri_models.device import torch_device
    from qmri_models.training.train_error_head import train_error_head

    config = _stage_one_config(flags, args)
    with user_errors():
        device = torch_device(args.device)
    with _stage_bars(f"puq-error-head {config.map_name}", quiet=args.quiet) as on_progress, user_errors():
        history = train_error_head(config, args.out, device=device, on_progress=on_progress)
    print(
        f"{args.out}: {config.steps} steps in {history.wall_s:.0f} s; validation r {history.val_correlation[-1]:.3f} "
        f"(MC SD alone {history.val_mc_sd_correlation:.3f}), calibration {history.val_calibration[-1]:.2f}; "
        f"weights (network and head) in {args.out / 'weights.pt'}"
    )
    return 0


def _train_map_quantile_head_arguments(p: argparse.ArgumentParser) -> None:
    from typing import get_args

    from gadgets.calibration_run import CalibratedChain
    from gadgets.quantile_head_run import HEAD_TRAINING_SLICES
    from qmri_models.training.train_map_quantile_head import QuantileHeadTraining

    p.add_argument("--out", type=Path, required=True, help="run folder: the replayed maps (reused) and weights.pt")
    p.add_argument("--chain", required=True, choices=get_args(CalibratedChain), help="the shipped mapping chain")
    p.add_argument(
        "--slices",
        type=int,
        default=HEAD_TRAINING_SLICES,
        help="training slices per acceleration, of the chain's shipped calibration recipe and accelerations "
        f"(default {HEAD_TRAINING_SLICES})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    flags = add_dataclass_flags(
        p,
        QuantileHeadTraining,
        ("alpha", "hidden", "epochs", "batch", "learning_rate", "seed"),
        flag_names={"seed": "init-seed"},
    )
    p.set_defaults(run=partial(_train_map_quantile_head, flags))


def _train_map_quantile_head(flags: "DataclassFlags[QuantileHeadTraining]", args: argparse.Namespace) -> int:
    from gadgets.quantile_head_run import WEIGHTS_NAME, head_training_data, train_chain_quantile_head

    settings = flags.build(args)
    with user_errors():
        data, accelerations = head_training_data(args.chain, args.slices)

    def on_epoch(epoch: int, loss: float) -> None:
        if not args.quiet:
            print(f"epoch {epoch}/{settings.epochs}: pinball loss {loss:.5f}", flush=True)

    with user_errors():
        trained = train_chain_quantile_head(
            args.chain, accelerations, data, settings, args.out, progress=not args.quiet, on_epoch=on_epoch
        )
    print(
        f"{args.out / WEIGHTS_NAME}: pinball loss {trained.train_loss:.5f} (training), {trained.held_out_loss:.5f} "
        f"(held out); held-out coverage before calibration {trained.held_out_coverage:.3f} "
        f"(trained for {1 - settings.alpha:g})"
    )
    return 0


def _ship_puq_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", choices=["t1", "t2"], required=True)
    p.add_argument("--recon-run", type=Path, required=True, help="folder of qmri train puq-recon, or of puq-error-head")
    p.add_argument("--fit-run", type=Path, required=True, help="folder of qmri train puq-fit")
    p.add_argument("--device-note", required=True, help="where it was trained, in words, for the card")
    p.set_defaults(run=_ship_puq)


def _ship_puq(args: argparse.Namespace) -> int:
    from qmri_models.training.ship import ship

    card = ship(args.map, args.recon_run, args.fit_run, device_note=args.device_note)
    print(f"shipped {args.map} weights; model card {card}")
    return 0


def _ship_diffusor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN", help="folder of qmri train diffusor")
    p.add_argument("--name", default="t1_ir", help="shipped name, what DiffusorGadget weights takes (default t1_ir)")
    p.add_argument("--device-note", required=True, help="where it was trained, in words, for the card")
    p.set_defaults(run=_ship_diffusor)


def _ship_diffusor(args: argparse.Namespace) -> int:
    from qmri_models.training.ship_diffusor import ship_diffusor

    card = ship_diffusor(args.run_dir, args.name, device_note=args.device_note)
    print(f"shipped Diffusor weights {args.name}; model card {card}")
    return 0


def _evaluate_puq_arguments(p: argparse.ArgumentParser) -> None:
    from qmri_models.puq_evaluation import evaluate_puq

    defaults = {name: parameter.default for name, parameter in inspect.signature(evaluate_puq).parameters.items()}
    p.add_argument("--contrast", choices=["t1", "t2"], required=True, help="t1: MOLLI, t2: T2-prep")
    p.add_argument("--accelerations", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--slices", type=int, default=defaults["n_slices"], help="held-out slices per acceleration")
    p.add_argument("--matrix", type=int, default=defaults["matrix"])
    p.add_argument("--mc-samples", type=int, default=defaults["mc_samples"], help="MC samples T")
    p.add_argument("--recon-weights", help="stage-1 network (default: the shipped one of the contrast)")
    p.add_argument("--fit-weights", help="learned fit (default: the shipped one of the contrast)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_evaluate_puq)


def _evaluate_puq(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qmri_models.device import torch_device
    from qmri_models.pretrained import MapName, load_fit_mlp, load_recon_network
    from qmri_models.puq_evaluation import PuqNetworks, evaluate_puq, format_table

    with user_errors():
        device = torch_device(args.device)
    map_name: MapName = "t1" if args.contrast == "t1" else "t2"
    networks = PuqNetworks(
        recon=load_recon_network(args.recon_weights or map_name).to(device),
        mlp_guided=load_fit_mlp(args.fit_weights or map_name, guided=True),
        mlp_unguided=load_fit_mlp(args.fit_weights or map_name, guided=False),
    )
    total = args.slices * len(args.accelerations)
    with tqdm(total=total, unit="slice", desc=f"evaluate-puq {map_name}", disable=args.quiet) as bar:
        results = evaluate_puq(
            map_name,
            args.accelerations,
            networks,
            n_slices=args.slices,
            matrix=args.matrix,
            mc_samples=args.mc_samples,
            device=device,
            on_slice=lambda _acceleration, _done: bar.update(1),
        )
    print(
        f"{map_name.upper()} maps, {args.slices} held-out slices per acceleration, {args.matrix}^2, 8 coils, "
        f"SNR 50, T={args.mc_samples}, {device}"
    )
    print(format_table(map_name, results))
    return 0
