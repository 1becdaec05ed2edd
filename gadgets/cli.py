"""The ``qmri`` command: every way in (serve, replay, stream), simulation, training, chains, evaluation, DICOM."""

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gadgets.runtime.chain import Chain, ChainError, chains_for_clients, load_chain, resolve_chain, shipped_chains
from gadgets.runtime.pipeline import StreamError
from qmri_models.protocols import PROTOCOLS, describe_protocols
from qmri_models.training.configs import ErrorHeadTrainingConfig, FitTrainingConfig, ReconTrainingConfig

log = logging.getLogger("qmri")


def _serve(args: argparse.Namespace) -> int:
    from gadgets.runtime.registry import registered_gadgets
    from gadgets.runtime.server import MrdServer, ServerLimits
    from gadgets.runtime.session import SiteSettings

    registered_gadgets()  # import the gadgets (sigpy, torch) now, not on the first scanner's connection
    if args.journal is not None:
        args.journal.mkdir(parents=True, exist_ok=True)  # a journal that cannot be written fails here, at start
    if args.site_chains is not None:
        for name, path in chains_for_clients(args.site_chains).items():
            load_chain(path)  # a broken site chain fails here, at start, not on a scanner's connection
            log.debug("chain '%s' offered from %s", name, path)
    args.output.mkdir(parents=True, exist_ok=True)
    site = SiteSettings(output_dir=args.output, journal_dir=args.journal, site_chains=args.site_chains)
    limits = ServerLimits(
        max_connections=args.max_connections,
        start_timeout_s=args.start_timeout,
        idle_timeout_s=args.idle_timeout,
        max_message_mb=args.max_message_mb,
    )
    with MrdServer(args.host, args.port, site=site, limits=limits) as server:
        log.info(
            "serving MRD on %s:%d (at most %d streams; timeouts %g s to start, %g s idle; messages up to %g MiB)%s%s",
            args.host,
            server.port,
            limits.max_connections,
            limits.start_timeout_s,
            limits.idle_timeout_s,
            limits.max_message_mb,
            f", journal in {args.journal}" if args.journal else "",
            f", site chains in {args.site_chains}" if args.site_chains else "",
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopped")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from gadgets.runtime.replay import replay

    chain = resolve_chain(args.chain)
    out = replay(args.raw, chain, args.out, group=args.group, progress=not args.quiet)
    print(f"images written to {out}")
    return 0


def _stream(args: argparse.Namespace) -> int:
    from gadgets.runtime.session import SiteSettings, serve_stream

    chain = resolve_chain(args.chain)
    site = SiteSettings(output_dir=args.output)
    ok = serve_stream(sys.stdin.buffer, sys.stdout.buffer, stream="stdin", chain=chain, site=site)
    return 0 if ok else 1


def _simulate(args: argparse.Namespace) -> int:
    if args.contrast == "mrf":
        return _simulate_mrf(args)
    from qmri_models.simulation.raw_writer import write_raw
    from qmri_models.simulation.scan import ScanSettings, simulate_scan

    settings = ScanSettings(
        contrast=args.contrast,
        matrix=160 if args.matrix is None else args.matrix,
        n_coils=args.coils,
        acceleration=args.acceleration,
        acs_fraction=args.acs_fraction,
        snr=args.snr,
        seed=args.seed,
        n_slices=args.slices,
        phantom=args.phantom,
    )
    write_raw(args.out, settings, simulate_scan(settings))
    print(
        f"{args.out}: {settings.contrast} {settings.phantom}, {settings.n_slices} slice(s), {settings.matrix}^2, "
        f"{settings.n_coils} coils, R={settings.acceleration}, ACS {settings.acs:.2f}, SNR {settings.snr:g}, "
        f"seed {settings.seed}"
    )
    return 0


def _simulate_mrf(args: argparse.Namespace) -> int:
    from qmri_models.simulation.mrf_raw_writer import write_mrf_raw
    from qmri_models.simulation.mrf_scan import MrfScanSettings, simulate_mrf_scan

    if args.phantom != "brain" or args.acceleration != 1 or args.acs_fraction is not None:
        raise ValueError(
            "mrf simulates the brain phantom on a spiral; --phantom, --acceleration and --acs-fraction "
            "are for the Cartesian contrasts"
        )
    settings = MrfScanSettings(
        matrix=256 if args.matrix is None else args.matrix,
        n_coils=args.coils,
        n_frames_full=args.frames,
        truncation=args.truncation,
        n_interleaves=args.interleaves,
        ordering=args.ordering,
        snr=args.snr,
        seed=args.seed,
        n_slices=args.slices,
        schedule_seed=args.schedule_seed,
    )
    slices = simulate_mrf_scan(settings)
    write_mrf_raw(args.out, settings, slices)
    print(
        f"{args.out}: mrf fisp brain, {settings.n_slices} slice(s), {settings.matrix}^2, {settings.n_coils} coils, "
        f"{settings.n_frames} of {settings.n_frames_full} frames (truncation {settings.truncation}), "
        f"{settings.n_interleaves} interleaves ({settings.ordering}) x {slices[0].coord.shape[1]} samples, "
        f"SNR {settings.snr:g}, seed {settings.seed}"
    )
    return 0


def _train_puq_recon(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qmri_models.device import torch_device
    from qmri_models.training.train_recon import train_recon

    config = ReconTrainingConfig(
        map_name=args.map,
        n_train=args.n_train,
        n_val=args.n_val,
        matrix=args.matrix,
        n_coils=args.coils,
        accelerations=tuple(args.accelerations),
        n_iterations=args.iterations,
        hidden=args.hidden,
        dropout=args.dropout,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validate_every=args.validate_every,
        seed=args.seed,
    )
    with tqdm(total=config.steps, unit="step", desc=f"train puq-recon {args.map}", disable=args.quiet) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            bar.refresh()

        history = train_recon(config, args.out, device=torch_device(args.device), on_step=on_step)
    print(
        f"{args.out}: {config.steps} steps in {history.wall_s:.0f} s; validation NRMSE {history.val_nrmse[-1]:.4f} "
        f"(zero-filled {history.val_zero_filled_nrmse:.4f}); weights in {args.out / 'weights.pt'}"
    )
    return 0


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


def _stage_one_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``StageOneData`` fields (the stage-1 data recipe) that ``puq-fit`` and ``puq-error-head`` share."""
    return {
        "map_name": args.map,
        "recon_weights": str(args.recon_weights or args.map),
        "n_train": args.n_train,
        "n_val": args.n_val,
        "matrix": args.matrix,
        "accelerations": tuple(args.accelerations),
        "mc_samples": args.mc_samples,
        "seed": args.seed,
    }


def _train_puq_fit(args: argparse.Namespace) -> int:
    from qmri_models.device import torch_device
    from qmri_models.training.train_fit import train_fit

    config = FitTrainingConfig(**_stage_one_fields(args), epochs=args.epochs)
    with _stage_bars(f"puq-fit {args.map}", quiet=args.quiet) as on_progress:
        history = train_fit(config, args.out, device=torch_device(args.device), on_progress=on_progress)
    print(
        f"{args.out}: {config.epochs} epochs on {history.n_train_pixels} pixels in {history.wall_s:.0f} s; validation "
        f"RMSE {history.val_rmse_guided_ms[-1]:.1f} ms guided, {history.val_rmse_unguided_ms[-1]:.1f} ms unguided; "
        f"weights in {args.out / 'fit_weights.pt'}"
    )
    return 0


def _train_puq_error_head(args: argparse.Namespace) -> int:
    from qmri_models.device import torch_device
    from qmri_models.training.train_error_head import train_error_head

    config = ErrorHeadTrainingConfig(**_stage_one_fields(args), hidden=args.hidden, steps=args.steps)
    with _stage_bars(f"puq-error-head {args.map}", quiet=args.quiet) as on_progress:
        history = train_error_head(config, args.out, device=torch_device(args.device), on_progress=on_progress)
    print(
        f"{args.out}: {config.steps} steps in {history.wall_s:.0f} s; validation r {history.val_correlation[-1]:.3f} "
        f"(MC SD alone {history.val_mc_sd_correlation:.3f}), calibration {history.val_calibration[-1]:.2f}; "
        f"weights (network and head) in {args.out / 'weights.pt'}"
    )
    return 0


def _ship_puq(args: argparse.Namespace) -> int:
    from qmri_models.training.ship import ship

    card = ship(args.map, args.recon_run, args.fit_run, device_note=args.device_note)
    print(f"shipped {args.map} weights; model card {card}")
    return 0


def _evaluate_puq(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qmri_models.device import torch_device
    from qmri_models.pretrained import MapName, load_fit_mlp, load_recon_network
    from qmri_models.puq_evaluation import PuqNetworks, evaluate_puq, format_table

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


def _chains(_: argparse.Namespace) -> int:
    for name, path in shipped_chains().items():
        try:
            description = load_chain(path).description
        except ChainError as exc:
            description = f"INVALID: {exc}"
        print(f"{name:28s} {description}")
    return 0


def _check_chain(args: argparse.Namespace) -> int:
    from gadgets.gadgetron_config import is_gadgetron_config, parse_gadgetron_config

    try:
        text = args.file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChainError(f"{args.file}: cannot read chain: {exc}") from exc
    if not is_gadgetron_config(text):
        chain = load_chain(args.file)
        print(f"{args.file}: valid chain '{chain.name}' with {len(chain.stages)} gadgets")
        _print_stages(chain, indent="  ")
        return 0
    config = parse_gadgetron_config(text, source=str(args.file))
    print(f"{args.file}: valid Gadgetron stream configuration with {len(config.stages)} elements")
    for stage in config.stages:
        kind = "our chain" if stage.chain is not None else "Gadgetron"
        print(f"  {stage.name} ({stage.classname}, {kind})")
        if stage.chain is not None:
            _print_stages(stage.chain, indent="    ")
    return 0


def _print_stages(chain: Chain, *, indent: str) -> None:
    for stage in chain.stages:
        settings = ", ".join(f"{k}={v}" for k, v in stage.properties.items())
        print(f"{indent}{stage.name} ({stage.spec.classname}) {settings}")


def _gadgets(_: argparse.Namespace) -> int:
    from gadgets.runtime.registry import registered_gadgets

    for name, spec in sorted(registered_gadgets().items()):
        print(f"{name}: {spec.summary}")
        for doc in spec.config.describe():
            site = ", site setting" if doc.site else ""
            print(f"    {doc.name} ({doc.type_name}, default {doc.default}{site}): {doc.doc}")
    print("Site settings come from chain files on the server (shipped, --site-chains), never from a client's text.")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from gadgets.evaluate import map_series_in, score_maps, score_phase_images, series_in

    images = args.out_dir / "images.h5"
    present = series_in(images)
    map_series = args.map_series or map_series_in(images)
    missing = [s for s in args.map_series or [] if s not in present]
    if missing:
        raise ValueError(f"{args.out_dir}: no map series {', '.join(map(str, missing))} (has {sorted(present)})")
    if args.series not in present and not map_series:
        raise ValueError(f"{args.out_dir}: neither phase series {args.series} nor a T1 or T2 map series found")
    if args.series in present:
        scores = score_phase_images(args.out_dir, args.raw, series=args.series)
        print(f"{'slice':>5} {'phase':>5} {'prep ms':>8} {'NRMSE':>8}")
        for s in scores:
            print(f"{s.slice:5d} {s.phase:5d} {s.prep_time_ms:8.1f} {s.nrmse:8.4f}")
        print(f"mean NRMSE {sum(s.nrmse for s in scores) / len(scores):.4f} over {len(scores)} images")
    for series in map_series:
        for entry in score_maps(args.out_dir, args.raw, series=series):
            print(f"slice {entry.slice} {entry.map_name} map (series {series}) against the truth, per tissue class:")
            print(f"  {'tissue':<14} {'pixels':>7} {'median APE %':>12} {'MAPE %':>8} {'NRMSE':>8} {'SSIM':>6}")
            for t in entry.tissues:
                print(
                    f"  {t.tissue:<14} {t.n_pixels:7d} {t.median_ape_percent:12.2f} {t.mape_percent:8.2f} "
                    f"{t.nrmse:8.4f} {t.ssim:6.3f}"
                )
    return 0


def _preview(args: argparse.Namespace) -> int:
    from gadgets.preview import write_preview

    gray = write_preview(args.images, args.series, args.out, slice_index=args.slice, phase=args.phase)
    print(f"{args.out}: series {args.series}, slice {args.slice}, {gray.shape[1]}x{gray.shape[0]} in its window")
    return 0


def _dicom_flush(args: argparse.Namespace) -> int:
    from gadgets.dicom.store import DicomNode, NotAnOutboxError, Outbox

    try:
        outbox = Outbox(args.dir, create=False)  # writes nothing; refuses a folder without the outbox marker
    except NotAnOutboxError as exc:
        send = f"qmri dicom-send {args.dir} --host {args.host} --port {args.port}"
        send += f" --called-ae {args.called_ae}" if args.called_ae else ""
        send += f" --calling-ae {args.calling_ae}" if args.calling_ae else ""
        raise ValueError(
            f"{exc}; dicom-flush deletes every file the node stores, so it flushes only outboxes. "
            f"To send results (a replay's dicom/ folder) and keep them: {send}"
        ) from exc
    names = {"called_ae": args.called_ae, "calling_ae": args.calling_ae}
    node = DicomNode(args.host, args.port, **{k: v for k, v in names.items() if v is not None})
    result = outbox.flush(node)
    for outcome in result.files:
        why = f": {outcome.reason}" if outcome.reason else ""
        print(f"{'stored' if outcome.stored else 'kept':<7} {outcome.path.name}{why}")
    for error in result.node_errors:
        print(f"error: {error}")
    print(f"{node}: sent {result.sent}, kept {result.kept} in {args.dir}")
    return 0 if result.kept == 0 else 1


def _dicom_send(args: argparse.Namespace) -> int:
    from gadgets.dicom.store import DicomNode, send_folder

    names = {"called_ae": args.called_ae, "calling_ae": args.calling_ae}
    node = DicomNode(args.host, args.port, **{k: v for k, v in names.items() if v is not None})
    result = send_folder(args.dir, node)
    lines = [(o.path, "skipped", o.reason) for o in result.skipped]
    lines += [(o.path, "stored" if o.stored else "failed", o.reason) for o in result.files]
    for path, word, reason in sorted(lines):
        why = f": {reason}" if reason else ""
        print(f"{word:<7} {path.relative_to(args.dir)}{why}")
    for error in result.node_errors:
        print(f"error: {error}")
    if not result.files:
        print(f"{node}: no DICOM files under {args.dir} ({len(result.skipped)} other entries skipped); nothing sent")
        return 1
    print(
        f"{node}: stored {result.stored} of {len(result.files)} DICOM file(s) under {args.dir}, "
        f"{len(result.skipped)} other entries skipped; no file moved or deleted"
    )
    return 0 if result.stored == len(result.files) else 1


def _port(text: str) -> int:
    """Return a TCP port number, or raise the error argparse prints for a bad option value."""
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``qmri`` command."""
    from gadgets.runtime.server import ServerLimits

    parser = argparse.ArgumentParser(prog="qmri", description="Streaming qMRI reconstruction with uncertainty.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the MRD streaming protocol over TCP")
    limits = ServerLimits()
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for the scanner network")
    p.add_argument("--port", type=_port, default=9002, help="TCP port")
    p.add_argument("--journal", type=Path, help="write every incoming stream to an ISMRMRD file in this directory")
    p.add_argument(
        "--output", type=Path, default=Path("qmri_output"), help="folder for files the chains write (DICOM, outbox)"
    )
    p.add_argument(
        "--site-chains",
        type=_folder,
        help="folder of the site's chain XML files, offered to clients by name (CONFIG_FILE); they may set site "
        "properties (DICOM node, weights files) that a client's own chain text may not",
    )
    p.add_argument(
        "--max-connections", type=_positive_int, default=limits.max_connections, help="streams served at once"
    )
    p.add_argument(
        "--start-timeout",
        type=_positive_float,
        default=limits.start_timeout_s,
        help="seconds a new connection has to send its config and header",
    )
    p.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=limits.idle_timeout_s,
        help="seconds a client may stay silent mid-stream (breath-holds) or leave replies unread",
    )
    p.add_argument(
        "--max-message-mb",
        type=_positive_float,
        default=limits.max_message_mb,
        help="largest readout, image or array message in MiB (refused unread)",
    )
    p.set_defaults(run=_serve)

    p = sub.add_parser("replay", help="run an ISMRMRD raw file through a chain")
    p.add_argument("raw", type=Path)
    p.add_argument("--chain", required=True, help="shipped chain name or chain XML file")
    p.add_argument("--out", type=Path, required=True, help="output directory (images.h5 goes there)")
    p.add_argument("--group", default="dataset", help="ISMRMRD dataset group")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_replay)

    p = sub.add_parser("stream", help="MRD byte stream on stdin through a chain, reply stream on stdout")
    p.add_argument("--chain", required=True, help="shipped chain name or chain XML file")
    p.add_argument(
        "--output", type=Path, default=Path("qmri_output"), help="folder for files the chain writes (DICOM, outbox)"
    )
    p.set_defaults(run=_stream)

    p = sub.add_parser("simulate", help="write a simulated multi-phase or spiral MRF raw file with its truth")
    p.add_argument(
        "contrast",
        choices=[*PROTOCOLS, "mrf"],
        help=f"{describe_protocols()} or mrf (spiral FISP fingerprinting, T1 and T2)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--matrix", type=int, help="image size (default 160; 256 for mrf)")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--acceleration", type=int, default=1, help="1, 4, 6, 8 or 10 (any integer >= 1 works)")
    p.add_argument("--acs-fraction", type=float, help="fully sampled centre fraction (default: PUQ paper's per R)")
    p.add_argument("--snr", type=float, default=50.0, help="mean tissue signal of the brightest phase / noise SD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=1)
    p.add_argument("--phantom", choices=["brain", "spheres"], default="brain")
    p.add_argument("--frames", type=int, default=1000, help="mrf: frames of the full FISP schedule")
    p.add_argument("--truncation", type=int, default=5, help="mrf: acquire the first frames/truncation frames")
    p.add_argument("--interleaves", type=int, default=48, help="mrf: spiral interleaves of the fixed set")
    p.add_argument("--ordering", choices=["fixed", "golden"], default="fixed", help="mrf: spiral rotation per frame")
    p.add_argument("--schedule-seed", type=int, default=0, help="mrf: seed of the schedule's TR noise")
    p.set_defaults(run=_simulate)

    p = sub.add_parser("train", help="train a network on simulated data (checkpoints; rerun to resume)")
    networks = p.add_subparsers(dest="network", required=True)
    recon = ReconTrainingConfig()  # the defaults, written once
    p = networks.add_parser("puq-recon", help="PUQ's unrolled reconstruction network with MC dropout")
    p.add_argument("--map", choices=["t1", "t2"], default=recon.map_name, help="t1: MOLLI data, t2: T2-prep data")
    p.add_argument("--out", type=Path, required=True, help="run folder: examples, checkpoint, weights, history")
    p.add_argument("--n-train", type=int, default=recon.n_train, help="simulated training slices")
    p.add_argument("--n-val", type=int, default=recon.n_val, help="simulated validation slices (their own seeds)")
    p.add_argument("--matrix", type=int, default=recon.matrix)
    p.add_argument("--coils", type=int, default=recon.n_coils)
    p.add_argument("--accelerations", type=int, nargs="+", default=recon.accelerations)
    p.add_argument("--iterations", type=int, default=recon.n_iterations, help="unrolled iterations")
    p.add_argument("--hidden", type=int, default=recon.hidden, help="hidden channels of every denoiser")
    p.add_argument("--dropout", type=float, default=recon.dropout)
    p.add_argument("--steps", type=int, default=recon.steps)
    p.add_argument("--batch-size", type=int, default=recon.batch_size)
    p.add_argument("--learning-rate", type=float, default=recon.learning_rate)
    p.add_argument("--validate-every", type=int, default=recon.validate_every)
    p.add_argument("--seed", type=int, default=recon.seed)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_train_puq_recon)

    fit = FitTrainingConfig()
    p = networks.add_parser("puq-fit", help="PUQ's learned fit (MLP), guided and unguided, on stage-1 output")
    p.add_argument("--map", choices=["t1", "t2"], default=fit.map_name, help="t1: MOLLI data, t2: T2-prep data")
    p.add_argument("--out", type=Path, required=True, help="run folder: pixel caches, checkpoint, weights, history")
    p.add_argument("--recon-weights", help="stage-1 network: t1, t2 (shipped) or a weights.pt (default: --map)")
    p.add_argument("--n-train", type=int, default=fit.n_train, help="simulated training slices (their own seeds)")
    p.add_argument("--n-val", type=int, default=fit.n_val, help="simulated validation slices")
    p.add_argument("--matrix", type=int, default=fit.matrix)
    p.add_argument("--accelerations", type=int, nargs="+", default=fit.accelerations)
    p.add_argument("--mc-samples", type=int, default=fit.mc_samples, help="MC samples per slice for the stage-1 SD")
    p.add_argument("--epochs", type=int, default=fit.epochs)
    p.add_argument("--seed", type=int, default=fit.seed)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train_puq_fit)

    head = ErrorHeadTrainingConfig()
    p = networks.add_parser(
        "puq-error-head", help="an error head on a trained puq-recon network: its per-phase uncertainty"
    )
    p.add_argument("--map", choices=["t1", "t2"], default=head.map_name, help="t1: MOLLI data, t2: T2-prep data")
    p.add_argument("--out", type=Path, required=True, help="run folder: example caches, checkpoint, weights, history")
    p.add_argument("--recon-weights", help="frozen stage-1 network: t1, t2 (shipped) or a weights.pt (default: --map)")
    p.add_argument("--n-train", type=int, default=head.n_train, help="simulated training slices (their own seeds)")
    p.add_argument("--n-val", type=int, default=head.n_val, help="simulated validation slices")
    p.add_argument("--matrix", type=int, default=head.matrix)
    p.add_argument("--accelerations", type=int, nargs="+", default=head.accelerations)
    p.add_argument("--mc-samples", type=int, default=head.mc_samples, help="MC samples per slice for the head's inputs")
    p.add_argument("--hidden", type=int, default=head.hidden, help="hidden channels of the head")
    p.add_argument("--steps", type=int, default=head.steps)
    p.add_argument("--seed", type=int, default=head.seed)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train_puq_error_head)

    p = networks.add_parser("puq-ship", help="copy trained PUQ weights into qmri_models/pretrained with a model card")
    p.add_argument("--map", choices=["t1", "t2"], required=True)
    p.add_argument("--recon-run", type=Path, required=True, help="folder of qmri train puq-recon, or of puq-error-head")
    p.add_argument("--fit-run", type=Path, required=True, help="folder of qmri train puq-fit")
    p.add_argument("--device-note", required=True, help="where it was trained, in words, for the card")
    p.set_defaults(run=_ship_puq)

    p = sub.add_parser("evaluate-puq", help="PUQ against its baselines on held-out simulated slices (table)")
    p.add_argument("--contrast", choices=["t1", "t2"], required=True, help="t1: MOLLI, t2: T2-prep")
    p.add_argument("--accelerations", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--slices", type=int, default=4, help="held-out slices per acceleration")
    p.add_argument("--matrix", type=int, default=160)
    p.add_argument("--mc-samples", type=int, default=100, help="MC samples T")
    p.add_argument("--recon-weights", help="stage-1 network (default: the shipped one of the contrast)")
    p.add_argument("--fit-weights", help="learned fit (default: the shipped one of the contrast)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_evaluate_puq)

    p = sub.add_parser("chains", help="list the shipped chains")
    p.set_defaults(run=_chains)

    p = sub.add_parser("check-chain", help="validate a chain XML file")
    p.add_argument("file", type=Path)
    p.set_defaults(run=_check_chain)

    p = sub.add_parser("gadgets", help="list the gadgets a chain can use, with their properties")
    p.set_defaults(run=_gadgets)

    p = sub.add_parser("evaluate", help="score a replay of a simulated file against its truth")
    p.add_argument("out_dir", type=Path)
    p.add_argument("raw", type=Path)
    p.add_argument("--series", type=int, default=1, help="series of the per-phase images")
    p.add_argument(
        "--map-series", type=int, nargs="+", help="series of the T1 or T2 maps (default: every series holding one)"
    )
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("preview", help="one image of a series as an 8-bit grayscale PNG, in its stored window")
    p.add_argument("images", type=Path, help="MRD images file (images.h5 of qmri replay)")
    p.add_argument("--series", type=int, required=True, help="image_series_index (11: map, 12: its SD, 1: phases)")
    p.add_argument("--slice", type=int, default=0, help="the image's slice")
    p.add_argument("--phase", type=int, help="the image's phase, for phase series (default: the slice's first)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.set_defaults(run=_preview)

    for command, run, about, folder in (
        (
            "dicom-flush",
            _dicom_flush,
            "send a qmri DICOM outbox to a DICOM node (C-STORE); stored files leave it; refuses other folders",
            "the outbox folder (it holds a .qmri-outbox marker)",
        ),
        (
            "dicom-send",
            _dicom_send,
            "send every DICOM file under a folder (a replay's dicom/) to a DICOM node (C-STORE); files stay",
            "the folder of results; its subfolders are sent too",
        ),
    ):
        p = sub.add_parser(command, help=about)
        p.add_argument("dir", type=Path, help=folder)
        p.add_argument("--host", required=True, help="the node's host name or address")
        p.add_argument("--port", type=int, required=True, help="the node's DICOM port")
        p.add_argument("--called-ae", help="the node's AE title (default ANY-SCP)")
        p.add_argument("--calling-ae", help="our AE title as the node knows us (default QMRI)")
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``qmri`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for library in ("pynetdicom", "highdicom"):  # not every PDU, not every module copied into every instance
        logging.getLogger(library).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.run(args))
    except Exception as exc:  # every failure is one line for people; --debug shows the traceback
        if args.debug:
            raise
        known = isinstance(exc, ChainError | StreamError | ValueError | OSError)
        message = " ".join(str(exc).split()) or type(exc).__name__
        log.error("qmri %s: %s%s", args.command, "" if known else f"{type(exc).__name__}: ", message)  # noqa: TRY400
        return 2
