"""What a replay wrote: ``qmri evaluate`` (scores against a simulated file's truth), ``qmri preview`` (a PNG)."""

import argparse
from pathlib import Path

from gadgets.cli.arguments import Subcommands, UsageError, add_command, user_errors


def add_commands(commands: Subcommands) -> None:
    """Add ``evaluate`` and ``preview``."""
    add_command(commands, "evaluate", "score a replay of a simulated file against its truth", _evaluate_arguments)
    add_command(
        commands,
        "preview",
        "one image of a series as an 8-bit grayscale PNG, in its stored window",
        _preview_arguments,
    )


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, help="output folder of qmri replay")
    p.add_argument("raw", type=Path, help="the simulated raw file it replayed (its truth)")
    p.add_argument("--series", type=int, default=1, help="series of the per-phase images")
    p.add_argument(
        "--map-series", type=int, nargs="+", help="series of the T1 or T2 maps (default: every series holding one)"
    )
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from gadgets.evaluate import map_series_in, score_maps, score_phase_images, score_structures, series_in

    images = args.out_dir / "images.h5"
    present = series_in(images)
    map_series = args.map_series or map_series_in(images)
    missing = [s for s in args.map_series or [] if s not in present]
    if missing:
        raise UsageError(f"{args.out_dir}: no map series {', '.join(map(str, missing))} (has {sorted(present)})")
    if args.series not in present and not map_series:
        raise UsageError(f"{args.out_dir}: neither phase series {args.series} nor a T1 or T2 map series found")
    if args.series in present:
        with user_errors():  # a raw file without the simulator's truth
            scores = score_phase_images(args.out_dir, args.raw, series=args.series)
        print(f"{'slice':>5} {'phase':>5} {'prep ms':>8} {'NRMSE':>8}")
        for s in scores:
            print(f"{s.slice:5d} {s.phase:5d} {s.prep_time_ms:8.1f} {s.nrmse:8.4f}")
        print(f"mean NRMSE {sum(s.nrmse for s in scores) / len(scores):.4f} over {len(scores)} images")
    for series in map_series:
        with user_errors():  # a raw file without the simulator's truth, a series of other images
            entries = score_maps(args.out_dir, args.raw, series=series)
        for entry in entries:
            print(f"slice {entry.slice} {entry.map_name} map (series {series}) against the truth, per tissue class:")
            print(f"  {'tissue':<14} {'pixels':>7} {'median APE %':>12} {'MAPE %':>8} {'NRMSE':>8} {'SSIM':>6}")
            for t in entry.tissues:
                print(
                    f"  {t.tissue:<14} {t.n_pixels:7d} {t.median_ape_percent:12.2f} {t.mape_percent:8.2f} "
                    f"{t.nrmse:8.4f} {t.ssim:6.3f}"
                )
        with user_errors():
            structure_entries = score_structures(args.out_dir, args.raw, series=series)
        for structures in structure_entries:
            print(
                f"slice {structures.slice} {structures.map_name} (series {series}) mean per tissue class, truth beside:"
            )
            print(f"  {'tissue':<14} {'pixels':>7} {'ml':>7} {'map ms':>8} {'truth ms':>8} {'error %':>8}")
            for st in structures.structures:
                print(
                    f"  {st.structure:<14} {st.pixels:7d} {st.volume_ml:7.2f} {st.map_mean_ms:8.1f} "
                    f"{st.truth_mean_ms:8.1f} {100 * st.relative_error:+8.2f}"
                )
    return 0


def _preview_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, help="MRD images file (images.h5 of qmri replay)")
    p.add_argument("--series", type=int, required=True, help="image_series_index (11: map, 12: its SD, 1: phases)")
    p.add_argument("--slice", type=int, default=0, help="the image's slice")
    p.add_argument("--phase", type=int, help="the image's phase, for phase series (default: the slice's first)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.set_defaults(run=_preview)


def _preview(args: argparse.Namespace) -> int:
    from gadgets.preview import write_preview

    with user_errors():  # no such series or image, an image without a window
        gray = write_preview(args.images, args.series, args.out, slice_index=args.slice, phase=args.phase)
    print(f"{args.out}: series {args.series}, slice {args.slice}, {gray.shape[1]}x{gray.shape[0]} in its window")
    return 0
