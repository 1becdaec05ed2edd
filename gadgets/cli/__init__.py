"""The ``qmri`` command: every way in (serve, replay, stream), simulation, training, chains, evaluation, DICOM.

One module per command group adds its commands; a command's arguments are added only when it is parsed, and its
handler imports what it needs, so that a command loads no more than itself (``qmri check-chain`` no simulator or
trainer). Our own errors (a chain, a stream, a file, what the user gave) are one line and exit status 2; anything else
is a bug and keeps its traceback.
"""

import argparse
import logging
import sys

from gadgets.cli import (
    calibrate,
    chains,
    dicom,
    evaluate_diffusor,
    evaluate_ensemble,
    evaluate_image_intervals,
    evaluate_uncertainty,
    results,
    run,
    simulate,
    train,
)
from gadgets.cli.arguments import CommandParser, UsageError
from gadgets.runtime.chain import ChainError
from gadgets.runtime.pipeline import StreamError

log = logging.getLogger("qmri")

USER_ERRORS = (ChainError, StreamError, OSError, UsageError)
"""What ``qmri`` prints as one line: a chain that cannot run, a stream that failed, a file, bad input."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``qmri`` command."""
    parser = CommandParser(prog="qmri", description="Streaming qMRI reconstruction with uncertainty.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (
        run,
        simulate,
        train,
        calibrate,
        evaluate_uncertainty,
        evaluate_image_intervals,
        evaluate_ensemble,
        evaluate_diffusor,
        chains,
        results,
        dicom,
    ):
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``qmri`` command; returns the exit status.

    Bad options are argparse's usage message and status 2. ChainError, StreamError, OSError and UsageError are one
    line on the ``qmri`` logger and status 2 (``--debug`` raises them with their traceback); any other exception
    propagates.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the help (status 0) or a usage error (status 2)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for library in ("pynetdicom", "highdicom"):  # not every PDU, not every module copied into every instance
        logging.getLogger(library).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.run(args))
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        log.error("qmri %s: %s", args.command, message)  # noqa: TRY400  (one line for people; --debug has the rest)
        return 2
