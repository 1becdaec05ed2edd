"""The ways in: ``qmri serve`` (MRD over TCP), ``qmri replay`` (a raw file), ``qmri stream`` (stdin to stdout)."""

import argparse
import logging
import sys
from pathlib import Path

from gadgets.cli.arguments import (
    Subcommands,
    add_command,
    folder,
    port,
    positive_float,
    positive_int,
    user_errors,
)

log = logging.getLogger("qmri")


def add_commands(commands: Subcommands) -> None:
    """Add ``serve``, ``replay`` and ``stream``."""
    add_command(commands, "serve", "serve the MRD streaming protocol over TCP", _serve_arguments)
    add_command(commands, "replay", "run an ISMRMRD raw file through a chain", _replay_arguments)
    add_command(
        commands, "stream", "MRD byte stream on stdin through a chain, reply stream on stdout", _stream_arguments
    )


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from gadgets.runtime.server import ServerLimits

    limits = ServerLimits()
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for the scanner network")
    p.add_argument("--port", type=port, default=9002, help="TCP port")
    p.add_argument("--journal", type=Path, help="write every incoming stream to an ISMRMRD file in this directory")
    p.add_argument(
        "--output", type=Path, default=Path("qmri_output"), help="folder for files the chains write (DICOM, outbox)"
    )
    p.add_argument(
        "--site-chains",
        type=folder,
        help="folder of the site's chain XML files, offered to clients by name (CONFIG_FILE); they may set site "
        "properties (DICOM node, weights files) that a client's own chain text may not",
    )
    p.add_argument(
        "--max-connections", type=positive_int, default=limits.max_connections, help="streams served at once"
    )
    p.add_argument(
        "--start-timeout",
        type=positive_float,
        default=limits.start_timeout_s,
        help="seconds a new connection has to send its config and header",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=limits.idle_timeout_s,
        help="seconds a client may stay silent mid-stream (breath-holds) or leave replies unread",
    )
    p.add_argument(
        "--max-message-mb",
        type=positive_float,
        default=limits.max_message_mb,
        help="largest readout, image or array message in MiB (refused unread)",
    )
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from gadgets.runtime.chain import chains_for_clients, load_chain
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


def _replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("raw", type=Path)
    p.add_argument("--chain", required=True, help="shipped chain name or chain XML file")
    p.add_argument("--out", type=Path, required=True, help="output directory (images.h5 goes there)")
    p.add_argument("--group", default="dataset", help="ISMRMRD dataset group")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_replay)


def _replay(args: argparse.Namespace) -> int:
    from gadgets.runtime.chain import resolve_chain
    from gadgets.runtime.replay import replay

    chain = resolve_chain(args.chain)
    with user_errors():  # a file that is not an ISMRMRD raw file, or a header the chain cannot take
        out = replay(args.raw, chain, args.out, group=args.group, progress=not args.quiet)
    print(f"images written to {out}")
    return 0


def _stream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chain", required=True, help="shipped chain name or chain XML file")
    p.add_argument(
        "--output", type=Path, default=Path("qmri_output"), help="folder for files the chain writes (DICOM, outbox)"
    )
    p.set_defaults(run=_stream)


def _stream(args: argparse.Namespace) -> int:
    from gadgets.runtime.chain import resolve_chain
    from gadgets.runtime.session import SiteSettings, serve_stream

    chain = resolve_chain(args.chain)
    site = SiteSettings(output_dir=args.output)
    ok = serve_stream(sys.stdin.buffer, sys.stdout.buffer, stream="stdin", chain=chain, site=site)
    return 0 if ok else 1
