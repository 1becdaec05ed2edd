"""One MRD stream from start to CLOSE: read the start, pick the chain, run it, reply, always close.

Used by the TCP server (one session per connection) and by stream mode (stdin to stdout).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gadgets.runtime.chain import Chain, ChainError, chains_for_clients, load_chain, parse_chain
from gadgets.runtime.header_check import check_header
from gadgets.runtime.journal import Journal
from gadgets.runtime.pipeline import StreamError, run_chain
from gadgets.runtime.protocol import (
    MessageLimits,
    MrdReader,
    ProtocolError,
    ReplyWriter,
    data_messages,
    read_messages,
    read_stream_start,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteSettings:
    """What the site (whoever starts the server or the stream) decides for every stream; no client can change it.

    Parameters
    ----------
    output_dir : Folder for files the gadgets write (DICOM, outbox); every path a chain names resolves inside it.
        The working directory if None.
    journal_dir : Where to journal every incoming stream, if anywhere.
    site_chains : Folder of the site's chain files, which clients name by CONFIG_FILE (they win over shipped
        chains of the same name, and may set site properties such as a DICOM node).
    message_limits : Size limits on every incoming message.
    """

    output_dir: Path | None = None
    journal_dir: Path | None = None
    site_chains: Path | None = None
    message_limits: MessageLimits = field(default_factory=MessageLimits)


def chain_for(config_file: str | None, config_text: str | None, site_chains: Path | None = None) -> Chain:
    """Return the chain a client asked for: a site or shipped chain by CONFIG_FILE name, or CONFIG_TEXT XML.

    A CONFIG_TEXT chain is a client's: it may not set site properties (paths, hosts, model files). A name is looked
    up among the site's chains and the shipped ones, never as a path (only its last component counts, as Gadgetron
    looks names up in its own configuration folder).

    Parameters
    ----------
    config_file : The CONFIG_FILE name, or None.
    config_text : The CONFIG_TEXT XML, or None.
    site_chains : The site's chain folder, or None.

    Returns
    -------
    The validated chain.

    Raises
    ------
    ChainError
        If the named chain does not exist, or the text is not a valid client chain.
    """
    if config_text is not None:
        return parse_chain(config_text)
    name = Path((config_file or "").strip()).name.removesuffix(".xml")
    available = chains_for_clients(site_chains)
    if name not in available:
        raise ChainError(f"no chain '{name[:64]}' on this server (chains: {', '.join(sorted(available))})")
    return load_chain(available[name])


def serve_stream(
    rfile: BinaryIO,
    wfile: BinaryIO,
    *,
    stream: str,
    site: SiteSettings | None = None,
    chain: Chain | None = None,
    on_started: Callable[[], None] | None = None,
    client_gone: Callable[[], bool] | None = None,
) -> bool:
    """Serve one MRD stream: errors go to the client as TEXT starting with ``ERROR``, and CLOSE is always sent.

    The chain is resolved as soon as the config message arrives and the header is checked as soon as it arrives,
    so a refused chain or header costs the server no more of the stream.

    Parameters
    ----------
    rfile : Incoming bytes.
    wfile : Outgoing bytes.
    stream : Name of the stream for logs (client address and number).
    site : The site's settings (output and journal folders, site chains, message limits); defaults if None.
    chain : Run this chain whatever the client's config message names (stream mode's ``--chain``).
    on_started : Called once config and header have arrived and passed (the server then relaxes its start timeout).
    client_gone : Polled while the chain works after the last input: True once the client has gone, which stops
        the stream's work.

    Returns
    -------
    True if the stream completed without error.
    """
    site = site or SiteSettings()
    reply = ReplyWriter(wfile)
    raw: Any = getattr(rfile, "raw", None)
    if hasattr(raw, "before_blocking_read"):  # the server's socket reader: flush replies whenever the client pauses
        raw.before_blocking_read = reply.flush
    reader = MrdReader(rfile, site.message_limits)
    chosen: list[Chain] = [] if chain is None else [chain]
    journal = None
    ok = False

    def on_config(config_file: str | None, config_text: str | None) -> None:
        if not chosen:
            chosen.append(chain_for(config_file, config_text, site.site_chains))

    def on_header(header: Any) -> None:
        check_header(header)
        reader.expect(header)
        if on_started is not None:
            on_started()

    try:
        messages = read_messages(reader)
        start = read_stream_start(messages, require_config=chain is None, on_config=on_config, on_header=on_header)
        (running,) = chosen
        protocol = start.header.measurementInformation.protocolName if start.header.measurementInformation else None
        log.info("%s: protocol '%s' through chain '%s' (%s)", stream, protocol, running.name, running.source)
        items = data_messages(start, messages)
        if site.journal_dir is not None:
            journal = _open_journal(site.journal_dir, start.header.toXML(), protocol or "unnamed", reply, stream)
        if journal is not None:
            items = journal.record(items)
        run_chain(
            running, start.header, items, reply.send, stream=stream, output_dir=site.output_dir, client_gone=client_gone
        )
        ok = True
    except (ProtocolError, ChainError, StreamError) as exc:
        log.error("%s: %s", stream, exc)  # noqa: TRY400 - the traceback was logged where it happened
        _send_error(reply, stream, str(exc))
    except OSError as exc:
        log.warning("%s: connection lost: %s", stream, exc)
    except Exception as exc:  # a bug: the client still gets ERROR (and CLOSE), the caller gets the exception
        _send_error(reply, stream, f"internal error of the server ({type(exc).__name__}); its log has the details")
        raise
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
