"""DICOM to a node by C-STORE: ``qmri dicom-flush`` (an outbox, emptied) and ``qmri dicom-send`` (results, kept)."""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gadgets.cli.arguments import Subcommands, UsageError, add_command, user_errors

if TYPE_CHECKING:
    from gadgets.dicom.store import DicomNode


def add_commands(commands: Subcommands) -> None:
    """Add ``dicom-flush`` and ``dicom-send``."""
    add_command(
        commands,
        "dicom-flush",
        "send a qmri DICOM outbox to a DICOM node (C-STORE); stored files leave it; refuses other folders",
        lambda p: _node_arguments(p, "the outbox folder (it holds a .qmri-outbox marker)", _dicom_flush),
    )
    add_command(
        commands,
        "dicom-send",
        "send every DICOM file under a folder (a replay's dicom/) to a DICOM node (C-STORE); files stay",
        lambda p: _node_arguments(p, "the folder of results; its subfolders are sent too", _dicom_send),
    )


def _node_arguments(p: argparse.ArgumentParser, folder: str, run: Callable[[argparse.Namespace], int]) -> None:
    p.add_argument("dir", type=Path, help=folder)
    p.add_argument("--host", required=True, help="the node's host name or address")
    p.add_argument("--port", type=int, required=True, help="the node's DICOM port")
    p.add_argument("--called-ae", help="the node's AE title (default ANY-SCP)")
    p.add_argument("--calling-ae", help="our AE title as the node knows us (default QMRI)")
    p.set_defaults(run=run)


def _node(args: argparse.Namespace) -> "DicomNode":
    """Return the node the options name; a bad host, port or AE title is the user's error."""
    from gadgets.dicom.store import DicomNode

    names = {"called_ae": args.called_ae, "calling_ae": args.calling_ae}
    with user_errors():
        return DicomNode(args.host, args.port, **{k: v for k, v in names.items() if v is not None})


def _dicom_flush(args: argparse.Namespace) -> int:
    from gadgets.dicom.store import NotAnOutboxError, Outbox

    try:
        outbox = Outbox(args.dir, create=False)  # writes nothing; refuses a folder without the outbox marker
    except NotAnOutboxError as exc:  # before ValueError, which it is
        send = f"qmri dicom-send {args.dir} --host {args.host} --port {args.port}"
        send += f" --called-ae {args.called_ae}" if args.called_ae else ""
        send += f" --calling-ae {args.calling_ae}" if args.calling_ae else ""
        raise UsageError(
            f"{exc}; dicom-flush deletes every file the node stores, so it flushes only outboxes. "
            f"To send results (a replay's dicom/ folder) and keep them: {send}"
        ) from exc
    except ValueError as exc:  # not a folder
        raise UsageError(str(exc)) from exc
    node = _node(args)
    result = outbox.flush(node)
    for outcome in result.files:
        why = f": {outcome.reason}" if outcome.reason else ""
        print(f"{'stored' if outcome.stored else 'kept':<7} {outcome.path.name}{why}")
    for error in result.node_errors:
        print(f"error: {error}")
    print(f"{node}: sent {result.sent}, kept {result.kept} in {args.dir}")
    return 0 if result.kept == 0 else 1


def _dicom_send(args: argparse.Namespace) -> int:
    from gadgets.dicom.store import send_folder

    node = _node(args)
    with user_errors():  # not a folder
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
