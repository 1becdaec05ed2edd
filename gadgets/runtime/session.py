"""One MRD stream from start to CLOSE: read the start, pick the chain, run it, reply, always close.

Used by the TCP server (one session per connection) and by stream mode (stdin to stdout).
"""

import logging
from pathlib import Path
from typing import Any, BinaryIO

from gadgets.runtime.chain import Chain, ChainError, parse_chain, resolve_chain
from gadgets.runtime.journal import Journal
from gadgets.runtime.pipeline import StreamError, run_chain
from gadgets.runtime.protocol import (
    ProtocolError,
    ReplyWriter,
    StreamStart,
    data_messages,
    read_messages,
    read_stream_start,
)

log = logging.getLogger(__name__)


def chain_for(start: StreamStart) -> Chain:
    """Return the chain a client asked for: a shipped chain by CONFIG_FILE name, or CONFIG_TEXT XML.

    Parameters
    ----------
    start : The stream's start.

    Returns
    -------
    The validated chain.

    Raises
    ------
    ChainError
        If the named chain does not exist or the text is not a valid chain.
    """
    if start.config_text is not None:
        return parse_chain(start.config_text)
    name = (start.config_file or "").strip()
    shipped_name = Path(name).name
    return resolve_chain(shipped_name)


def serve_stream(
    rfile: BinaryIO,
    wfile: BinaryIO,
    *,
    stream: str,
    journal_dir: Path | None = None,
    chain: Chain | None = None,
    output_dir: Path | None = None,
) -> bool:
    """Serve one MRD stream: errors go to the client as TEXT starting with ``ERROR``, and CLOSE is always sent.

    Parameters
    ----------
    rfile : Incoming bytes.
    wfile : Outgoing bytes.
    stream : Name of the stream for logs (client address and number).
    journal_dir : Where to journal the incoming stream, if anywhere.
    chain : Run this chain whatever the client's config message names (stream mode's ``--chain``).
    output_dir : Folder for files the gadgets write (DICOM); the working directory if None.

    Returns
    -------
    True if the stream completed without error.
    """
    reply = ReplyWriter(wfile)
    raw: Any = getattr(rfile, "raw", None)
    if hasattr(raw, "before_blocking_read"):  # the server's socket reader: flush replies whenever the client pauses
        raw.before_blocking_read = reply.flush
    journal = None
    ok = False
    try:
        messages = read_messages(rfile)
        start = read_stream_start(messages, require_config=chain is None)
        if chain is None:
            chain = chain_for(start)
        protocol = start.header.measurementInformation.protocolName if start.header.measurementInformation else None
        log.info("%s: protocol '%s' through chain '%s' (%s)", stream, protocol, chain.name, chain.source)
        items = data_messages(start, messages)
        if journal_dir is not None:
            journal = _open_journal(journal_dir, start.header.toXML(), protocol or "unnamed", reply, stream)
        if journal is not None:
            items = journal.record(items)
        run_chain(chain, start.header, items, reply.send, stream=stream, output_dir=output_dir)
        ok = True
    except (ProtocolError, ChainError, StreamError) as exc:
        log.error("%s: %s", stream, exc)  # noqa: TRY400 - the traceback was logged where it happened
        _send_error(reply, stream, str(exc))
    except OSError as exc:
        log.warning("%s: connection lost: %s", stream, exc)
    finally:
        if journal is not None:
            journal.close()
        try:
            reply.close()
        except OSError as exc:
            log.warning("%s: could not send CLOSE, client gone: %s", stream, exc)
    return ok


def _open_journal(directory: Path, header_xml: str, protocol: str, reply: ReplyWriter, stream: str) -> Journal | None:
    """Return a journal for the stream, or None after warning log and client that it cannot be written.

    The scan still gets reconstructed: losing the safety copy is better than losing the images.
    """
    try:
        return Journal(directory, header_xml, protocol)
    except OSError as exc:
        log.error("%s: cannot journal to %s, continuing without: %s", stream, directory, exc)  # noqa: TRY400
        reply.text(f"WARNING the server cannot journal this stream to {directory}: {exc}")
        return None


def _send_error(reply: ReplyWriter, stream: str, message: str) -> None:
    """Send ``ERROR <message>`` to the client, logging if it has gone."""
    try:
        reply.text(f"ERROR {message}")
    except OSError as exc:
        log.warning("%s: could not send the error, client gone: %s", stream, exc)
