"""``qmri evaluate-ensemble``: MC dropout against a deep ensemble of trained reconstruction networks."""

import argparse
from pathlib import Path

from gadgets.cli.arguments import Subcommands, UsageError, add_command, positive_int, user_errors


def add_commands(commands: Subcommands) -> None:
    """Add ``evaluate-ensemble``."""
    add_command(
        commands,
        "evaluate-ensemble",
        "MC dropout vs a deep ensemble of puq-recon runs on fresh slices: coverage, width, structure-level error",
        _arguments,
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    from gadgets.ensemble_evaluation import DEFAULT_MC_SAMPLES, DEFAULT_SLICES, ENSEMBLE_SEED

    p.add_argument(
        "--members",
        type=Path,
        nargs="+",
        required=True,
        help="weights.pt of every member (qmri train puq-recon runs, one map); the first also samples MC dropout",
    )
    p.add_argument(
        "--slices", type=positive_int, default=DEFAULT_SLICES, help="fresh slices: half calibrate, half test"
    )
    p.add_argument("--acceleration", type=positive_int, default=8, help="undersampling factor")
    p.add_argument("--matrix", type=positive_int, help="image size (default: the members' training matrix)")
    p.add_argument("--mc-samples", type=positive_int, default=DEFAULT_MC_SAMPLES, help="MC-dropout samples T per slice")
    p.add_argument("--seed", type=int, default=ENSEMBLE_SEED, help="base seed of the fresh slices")
    p.add_argument("--device", default="cpu", help="where the networks run: cpu or cuda")
    p.set_defaults(run=_evaluate_ensemble)


def _evaluate_ensemble(args: argparse.Namespace) -> int:
    import torch

    from gadgets.ensemble_evaluation import evaluate_ensemble, report_table
    from qmri_models.pretrained import load_recon_network, weights_path

    if len(args.members) < 2:
        raise UsageError(f"an ensemble needs at least 2 --members, got {len(args.members)}")
    configs = [
        torch.load(weights_path("recon", p), map_location="cpu", weights_only=True)["config"] for p in args.members
    ]
    maps = {c["map_name"] for c in configs}
    if len(maps) != 1:
        raise UsageError(f"members reconstruct different maps: {sorted(maps)}")
    first = configs[0]
    matrix = args.matrix or int(first["matrix"])
    with user_errors():  # members of different phases, a bad device, too few slices
        members = [load_recon_network(p).to(args.device) for p in args.members]
        reports = evaluate_ensemble(
            members,
            first["map_name"],
            n_slices=args.slices,
            acceleration=args.acceleration,
            matrix=matrix,
            n_coils=int(first["n_coils"]),
            snr=float(first["snr"]),
            mc_samples=args.mc_samples,
            seed=args.seed,
            device=args.device,
        )
    sizes = "; ".join(
        f"member {i + 1}: seed {c['seed']}, matrix {c['matrix']}, hidden {c['hidden']}, {c['n_iterations']} "
        f"iterations, dropout {c['dropout']}, {c['steps']} steps on {c['n_train']} slices"
        for i, c in enumerate(configs)
    )
    setup = (
        f"{first['map_name'].upper()} maps, R = {args.acceleration}, {args.slices} fresh slices of {matrix}^2 "
        f"(seed {args.seed}), model-based guided fit. Members ({sizes})."
    )
    print(report_table(reports, setup=setup))
    return 0
