"""Send DICOM files to a DICOM node (C-STORE): through an outbox, or straight from a folder of results.

Through the outbox, nothing is lost when the node is down: every file to send is first copied into an :class:`Outbox`
folder (written to a hidden temporary name, then renamed, so the outbox never holds half a file). :meth:`Outbox.flush`
C-STOREs every pending file over one association (pynetdicom) and removes a file only once the node has answered that
it stored it. A node that is down, refuses the association or answers with a failure status leaves its files in the
outbox, and ``qmri dicom-flush`` sends them by hand later. Short timeouts keep a dead node from holding up the stream.

An outbox carries a marker file (:data:`OUTBOX_MARKER`), written when it is made or opened for adding; a folder
without one is never flushed, because a flush deletes what the node stored, and results must not vanish.
:func:`send_folder` (``qmri dicom-send``) sends every DICOM file under a folder of results and deletes nothing.
Both go through one sender (:func:`_deliver`); only the flush removes the files the node stored.
"""

import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
"""Seconds to wait for the node's TCP connection."""
ASSOCIATION_TIMEOUT_S = 5.0
"""Seconds to wait for the node to accept or reject the association (ACSE)."""
RESPONSE_TIMEOUT_S = 30.0
"""Seconds to wait for the node's answer to one C-STORE (DIMSE); large maps take a while to store."""
NETWORK_TIMEOUT_S = 30.0
"""Seconds without any network traffic before the association is aborted."""

MAX_CONTEXTS = 128
"""Presentation contexts one association may propose (DICOM PS3.8: 128 odd context IDs)."""

SAFE_WARNINGS = frozenset({0xB000, 0xB007})
"""C-STORE warning statuses after which the node holds the whole instance, so the file leaves the outbox.

``0xB000`` coercion of data elements and ``0xB007`` data set does not match SOP class: the node stored all we sent.
``0xB006`` element discarded is not here: the node dropped part of the data, so the file stays for a person to see.
"""

OUTBOX_MARKER = ".qmri-outbox"
"""Hidden file that marks a folder as an outbox; only a marked folder is flushed (a flush deletes what it sent)."""

_MARKER_TEXT = (
    "qmri DICOM outbox: the files here wait for a DICOM node. `qmri dicom-flush` sends them and deletes every file\n"
    "the node stored, so keep nothing else here. Results (a replay's dicom/ folder) are sent with `qmri dicom-send`.\n"
)
_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LOCK_NAME = ".flush.lock"


class NotAnOutboxError(ValueError):
    """A folder without the outbox marker was asked to act as an outbox; nothing in it was touched."""


@dataclass(frozen=True)
class DicomNode:
    """A DICOM node (PACS, Orthanc, scanner) that takes C-STORE requests.

    Parameters
    ----------
    host : Host name or IP address of the node.
    port : The node's DICOM port, 1 to 65535.
    called_ae : The node's AE title (at most 16 ASCII characters).
    calling_ae : Our AE title, as the node knows us (at most 16 ASCII characters).
    """

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "QMRI"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"DICOM node host must be a host name or address; got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"DICOM node port must be an integer in [1, 65535]; got {self.port!r}")
        for name in ("called_ae", "calling_ae"):
            _check_ae_title(name, getattr(self, name))

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"


def _check_ae_title(name: str, title: object) -> None:
    """Raise ValueError naming ``title`` unless it is a valid AE title (DICOM VR AE)."""
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"{name} must be a non-empty AE title; got {title!r}")
    if len(title) > 16:
        raise ValueError(f"{name} must be at most 16 characters; got {title!r} ({len(title)})")
    if not title.isascii() or not title.isprintable() or "\\" in title:
        raise ValueError(f"{name} must be printable ASCII without backslash; got {title!r}")


@dataclass(frozen=True)
class FileOutcome:
    """What a send did with one file.

    Parameters
    ----------
    path : The file.
    stored : True when the node stored it (success, or a warning after which the node holds the whole instance).
    reason : Why it was not stored, or the warning it was stored with; empty when stored without a warning.
    """

    path: Path
    stored: bool
    reason: str = ""


@dataclass(frozen=True)
class FlushResult:
    """What one :meth:`Outbox.flush` did.

    Parameters
    ----------
    sent : Files the node stored; they left the outbox.
    kept : Files still in the outbox (node down, association rejected, failure status ...).
    errors : One line per problem, for people: what happened, with node, file and status.
    files : One outcome per pending file, oldest first.
    node_errors : The lines of ``errors`` about whole batches (no association, association lost), not one file.
    """

    sent: int
    kept: int
    errors: list[str] = field(default_factory=list)
    files: list[FileOutcome] = field(default_factory=list, compare=False)
    node_errors: list[str] = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class SendResult:
    """What one :func:`send_folder` did; no file was moved or deleted.

    Parameters
    ----------
    files : One outcome per DICOM file found, in path order.
    skipped : Entries passed over, with why: files that are not DICOM, symbolic links, folders that cannot be listed.
    node_errors : One line per batch the node did not take (no association, association lost).
    """

    files: list[FileOutcome]
    skipped: list[FileOutcome]
    node_errors: list[str]

    @property
    def stored(self) -> int:
        """DICOM files the node stored."""
        return sum(outcome.stored for outcome in self.files)


@dataclass(frozen=True)
class _Pending:
    """A file in the outbox with the presentation context it needs."""

    path: Path
    sop_class: str
    transfer_syntax: str

    @property
    def context_key(self) -> tuple[str, str]:
        """One context per SOP class for native encodings (pynetdicom converts between them), else per syntax."""
        return (self.sop_class, "native" if self.transfer_syntax in _NATIVE else self.transfer_syntax)


def is_outbox(folder: Path) -> bool:
    """Return True when ``folder`` carries the outbox marker (:data:`OUTBOX_MARKER`)."""
    return (Path(folder) / OUTBOX_MARKER).is_file()


class Outbox:
    """A folder of DICOM files waiting for a DICOM node; files leave it only once the node has stored them.

    Parameters
    ----------
    folder : The outbox folder.
    create : True (to add files): create the folder when missing and mark it as an outbox. False (to flush what is
        there): write nothing, and refuse a folder that is not a marked outbox.

    Raises
    ------
    ValueError
        With ``create=False``, if ``folder`` is not a folder.
    NotAnOutboxError
        With ``create=False``, if ``folder`` has no outbox marker (results, a replay's dicom/ folder ...).
    """

    def __init__(self, folder: Path, *, create: bool = True) -> None:
        self.folder = Path(folder)
        if create:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not is_outbox(self.folder):
                _write_atomically(self.folder / OUTBOX_MARKER, lambda out: out.write(_MARKER_TEXT.encode()))
        elif not self.folder.is_dir():
            raise ValueError(f"outbox {self.folder} is not a folder")
        elif not is_outbox(self.folder):
            raise NotAnOutboxError(f"{self.folder} is not a qmri DICOM outbox (it has no {OUTBOX_MARKER} marker)")

    def add(self, path: Path) -> Path:
        """Copy a written DICOM file into the outbox, atomically (temporary file, fsync, rename).

        Parameters
        ----------
        path : A DICOM file with file meta information (Part 10).

        Returns
        -------
        The file's path in the outbox; its name starts with the time it was added, so names sort oldest first.

        Raises
        ------
        ValueError
            If ``path`` is not a DICOM file with SOP class and transfer syntax in its file meta.
        """
        path = Path(path)
        try:
            _read_meta(path)  # a file the node could never take fails here, where the caller can see it
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        target = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-{path.name}"
        with path.open("rb") as src:
            _write_atomically(target, lambda dst: shutil.copyfileobj(src, dst))
        return target

    def pending(self) -> list[Path]:
        """Return the files waiting to be sent, oldest first (hidden and temporary files excluded)."""
        files = []
        for path in self.folder.iterdir():
            if path.name.startswith("."):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # sent by another flush while we looked
                continue
            if stat.S_ISREG(info.st_mode):
                files.append((info.st_mtime_ns, path.name, path))
        return [path for *_, path in sorted(files)]

    def flush(self, node: DicomNode) -> FlushResult:
        """C-STORE every pending file to ``node``; remove each file the node stored, keep the rest.

        Never raises for a node that is down, refuses, rejects or times out: those files stay and ``errors`` says why.
        A folder that has lost its outbox marker is not flushed: nothing is sent, nothing deleted.

        Parameters
        ----------
        node : The DICOM node.

        Returns
        -------
        Files sent and kept, one outcome per file and one line per problem.
        """
        if not is_outbox(self.folder):
            message = f"{self.folder} is not a qmri DICOM outbox (its {OUTBOX_MARKER} marker is gone); not flushed"
            log.warning("%s", message)
            return FlushResult(sent=0, kept=len(self.pending()), errors=[message], node_errors=[message])
        with self._lock() as locked:
            files = self.pending()
            if not locked:
                message = f"another flush of outbox {self.folder} is running; {len(files)} file(s) left to it"
                log.warning("%s", message)
                return FlushResult(sent=0, kept=len(files), errors=[message], node_errors=[message])
            if not files:
                return FlushResult(sent=0, kept=0)
            unreadable = _Delivery()
            readable: list[_Pending] = []
            for path in files:
                try:
                    sop_class, syntax = _read_meta(path)
                except ValueError as exc:
                    unreadable.fail(path, str(exc))
                    continue
                readable.append(_Pending(path, sop_class, syntax))
            delivery = _deliver(node, readable, remove_stored=True)
        order = {path: index for index, path in enumerate(files)}
        outcomes = sorted([*unreadable.files, *delivery.files], key=lambda outcome: order[outcome.path])
        sent = sum(outcome.stored for outcome in outcomes)
        kept = len(files) - sent
        if kept:
            log.warning(
                "DICOM node %s: sent %d of %d file(s); %d kept in %s. Check the node (is it running, does it know AE "
                "%s?) and retry with: qmri dicom-flush %s --host %s --port %d --called-ae %s --calling-ae %s",
                node,
                sent,
                len(files),
                kept,
                self.folder,
                node.calling_ae,
                self.folder,
                node.host,
                node.port,
                node.called_ae,
                node.calling_ae,
            )
        else:
            log.info("DICOM node %s: sent all %d file(s) from %s", node, sent, self.folder)
        return FlushResult(
            sent=sent,
            kept=kept,
            errors=unreadable.errors + delivery.errors,
            files=outcomes,
            node_errors=delivery.node_errors,
        )

    @contextmanager
    def _lock(self) -> Iterator[bool]:
        """Hold the outbox's flush lock while the block runs; yields False when another flush holds it."""
        with (self.folder / _LOCK_NAME).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def send_folder(folder: Path, node: DicomNode) -> SendResult:
    """C-STORE every DICOM file under ``folder`` (its subfolders too) to ``node``; move or delete nothing.

    A replay's ``dicom/`` folder holds one subfolder per series; all of them go, over as few associations as the
    presentation contexts allow. Hidden files and folders (temporaries, markers) are passed over; symbolic links are
    never followed (a link can point out of ``folder``); files that are not DICOM are skipped with why. Never raises
    for a node that is down, refuses, rejects or times out: ``node_errors`` says why.

    Parameters
    ----------
    folder : The folder of results.
    node : The DICOM node.

    Returns
    -------
    One outcome per DICOM file, the entries skipped, and one line per batch the node did not take.

    Raises
    ------
    ValueError
        If ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    found, skipped = _files_under(folder)
    readable: list[_Pending] = []
    for path in found:
        try:
            sop_class, syntax = _read_meta(path)
        except ValueError as exc:
            skipped.append(FileOutcome(path, stored=False, reason=str(exc)))
            continue
        readable.append(_Pending(path, sop_class, syntax))
    delivery = _deliver(node, readable, remove_stored=False)
    log.info(
        "DICOM node %s: stored %d of %d DICOM file(s) from %s",
        node,
        sum(outcome.stored for outcome in delivery.files),
        len(readable),
        folder,
    )
    skipped.sort(key=lambda outcome: outcome.path)
    return SendResult(files=delivery.files, skipped=skipped, node_errors=delivery.node_errors)


def _files_under(folder: Path) -> tuple[list[Path], list[FileOutcome]]:
    """Return the regular files under ``folder``, sorted, and the entries passed over with why (links, unlistable)."""
    root = folder.resolve()
    files: list[Path] = []
    skipped: list[FileOutcome] = []

    def unlistable(exc: OSError) -> None:
        skipped.append(FileOutcome(Path(exc.filename or folder), stored=False, reason=f"cannot list it ({exc})"))

    for current, folders, names in os.walk(folder, onerror=unlistable):  # links to folders are listed, not entered
        base = Path(current)
        entered = []
        for name in sorted([*folders, *names]):
            if name.startswith("."):
                continue
            path = base / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                skipped.append(FileOutcome(path, stored=False, reason=_link_reason(path, root)))
            elif stat.S_ISDIR(info.st_mode):
                entered.append(name)
            elif stat.S_ISREG(info.st_mode):
                files.append(path)
            else:
                skipped.append(FileOutcome(path, stored=False, reason="not a regular file"))
        folders[:] = entered
    return sorted(files), skipped


def _link_reason(link: Path, root: Path) -> str:
    """Say why a symbolic link under ``root`` is passed over, and where it points."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        return f"symbolic link that does not resolve ({exc}): not followed"
    where = "inside" if target.is_relative_to(root) else "out of"
    return f"symbolic link to {target} ({where} {root}): not followed"


def _read_meta(path: Path) -> tuple[str, str]:
    """Return the SOP class and transfer syntax UIDs from a DICOM file's meta; ValueError saying why if absent."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise ValueError(f"not a readable DICOM file ({exc})") from exc
    sop_class = meta.get("MediaStorageSOPClassUID")
    syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not syntax:
        raise ValueError("DICOM file meta lacks MediaStorageSOPClassUID or TransferSyntaxUID")
    return str(sop_class), str(syntax)


def _write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``target`` through a hidden temporary file in its folder (fsync, rename), so it is whole or absent."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _batches(files: list[_Pending]) -> list[list[_Pending]]:
    """Split files, in order, into groups that need at most :data:`MAX_CONTEXTS` presentation contexts each."""
    batches: list[list[_Pending]] = []
    keys: set[tuple[str, str]] = set()
    for item in files:
        if not batches or (item.context_key not in keys and len(keys) == MAX_CONTEXTS):
            batches.append([])
            keys = set()
        keys.add(item.context_key)
        batches[-1].append(item)
    return batches


def _contexts(files: list[_Pending]) -> list[PresentationContext]:
    """Return one presentation context per SOP class and encoding the files need."""
    contexts: dict[tuple[str, str], PresentationContext] = {}
    for item in files:
        if item.context_key not in contexts:
            syntaxes: list[str] = list(_NATIVE) if item.transfer_syntax in _NATIVE else [item.transfer_syntax]
            contexts[item.context_key] = build_context(item.sop_class, syntaxes)
    return list(contexts.values())


@dataclass
class _Delivery:
    """What a send did so far: one outcome per file tried, and the problems, for people."""

    files: list[FileOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Every problem: one line per file not stored (its name first) and per batch."""
    node_errors: list[str] = field(default_factory=list)
    """The problems of whole batches: no association, association lost."""

    def fail(self, path: Path, reason: str) -> None:
        """Record a file that was not stored, and why."""
        self.files.append(FileOutcome(path, stored=False, reason=reason))
        self.errors.append(f"{path.name}: {reason}")

    def batch_failed(self, message: str, files: list[_Pending], reason: str) -> None:
        """Record a batch problem once, and each of its files as not sent."""
        self.errors.append(message)
        self.node_errors.append(message)
        self.files.extend(FileOutcome(item.path, stored=False, reason=reason) for item in files)


def _deliver(node: DicomNode, files: list[_Pending], *, remove_stored: bool) -> _Delivery:
    """C-STORE ``files`` to ``node``, in order, over as few associations as their presentation contexts allow.

    With ``remove_stored`` (the outbox), each file the node stored is deleted at once; without it, nothing is.
    After a batch that got no association, the later batches are not tried: the node would not take them either.
    """
    delivery = _Delivery()
    batches = _batches(files)
    for index, batch in enumerate(batches):
        if not _send_batch(node, batch, delivery, remove_stored=remove_stored):
            later = [item for rest in batches[index + 1 :] for item in rest]
            delivery.files.extend(
                FileOutcome(item.path, stored=False, reason=f"not sent: no association with {node}") for item in later
            )
            break
    return delivery


def _send_batch(node: DicomNode, files: list[_Pending], delivery: _Delivery, *, remove_stored: bool) -> bool:
    """C-STORE ``files`` over one association, recording each outcome; return False when no association was made."""
    ae = AE(ae_title=node.calling_ae)
    ae.connection_timeout = CONNECT_TIMEOUT_S
    ae.acse_timeout = ASSOCIATION_TIMEOUT_S
    ae.dimse_timeout = RESPONSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    not_sent = f"not sent: no association with {node}"
    with _PynetdicomErrors() as causes:
        try:
            assoc = ae.associate(node.host, node.port, contexts=_contexts(files), ae_title=node.called_ae)
        except (OSError, ValueError, RuntimeError) as exc:  # host name that does not resolve, invalid UID ...
            message = f"cannot reach {node} ({exc}): is {node.host} the node's host name or address?"
            delivery.batch_failed(f"{message}; {len(files)} file(s) not sent", files, not_sent)
            return False
    if not assoc.is_established:
        threads = {assoc.ident, assoc.dul.ident}  # pynetdicom connects from the association's DUL thread
        delivery.batch_failed(
            _why_no_association(node, assoc, causes.for_threads(threads), len(files)), files, not_sent
        )
        return False
    try:
        for number, item in enumerate(files, start=1):
            if not assoc.is_established:
                rest = files[number - 1 :]
                message = f"DICOM node {node}: association lost; {len(rest)} file(s) not sent"
                delivery.batch_failed(message, rest, f"not sent: association with {node} lost")
                break
            _store_one(node, assoc, item, number, delivery, remove_stored=remove_stored)
    finally:
        if assoc.is_established:
            assoc.release()
    return True


def _store_one(
    node: DicomNode, assoc: Association, item: _Pending, message_id: int, delivery: _Delivery, *, remove_stored: bool
) -> None:
    """C-STORE one file and record what the node answered; with ``remove_stored``, delete it once stored."""
    try:
        status = assoc.send_c_store(item.path, msg_id=message_id % 65536)
    except FileNotFoundError:
        log.debug("%s went away during the send (another flush sent it, or it was deleted)", item.path)
        delivery.files.append(FileOutcome(item.path, stored=False, reason="went away before it was sent"))
        return
    except ValueError as exc:  # pynetdicom: no accepted presentation context, or the dataset cannot be encoded
        delivery.fail(
            item.path, f"not sent to {node}: {exc} (SOP class {item.sop_class}, syntax {item.transfer_syntax})"
        )
        return
    except (InvalidDicomError, OSError, EOFError, AttributeError) as exc:
        delivery.fail(item.path, f"not sent to {node}: cannot read it ({exc})")
        return
    code = status.get("Status")
    if code is None:
        delivery.fail(item.path, f"no C-STORE response from {node} (timed out or association aborted)")
        return
    category, description = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code) or ("Unknown", "")
    if code == 0x0000 or code in SAFE_WARNINGS:
        warning = ""
        if code != 0x0000:
            warning = f"warning 0x{code:04X} ({description})"
            log.warning("%s: stored by %s with %s", item.path.name, node, warning)
        if remove_stored:
            item.path.unlink(missing_ok=True)
        delivery.files.append(FileOutcome(item.path, stored=True, reason=warning))
        return
    delivery.fail(item.path, f"C-STORE status 0x{code:04X} from {node} ({category}: {description})")


def _why_no_association(node: DicomNode, assoc: Association, causes: list[str], n_files: int) -> str:
    """Return, for people, why no association with ``node`` was made."""
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        reason = f"{answer.result_str}, {answer.source_str}: {answer.reason_str}" if answer is not None else "rejected"
        what = f"association rejected by {node} ({reason}); right called AE? does it accept AE {node.calling_ae}?"
    elif causes:
        why = "; ".join(causes)
        hint = (
            "nothing listens there: is the node running, and is that its DICOM port?"
            if "refused" in why.lower()
            else f"is the node running, and {node.host}:{node.port} reachable from here?"
        )
        what = f"cannot reach {node} ({why}): {hint}"
    elif assoc.rejected_contexts and not assoc.accepted_contexts:
        offered = ", ".join(sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        what = f"{node} takes none of the SOP classes / transfer syntaxes offered ({offered}); association aborted"
    else:
        what = f"no association with {node} (node down, not answering within {ASSOCIATION_TIMEOUT_S:g} s, or aborted)"
    return f"{what}; {n_files} file(s) not sent"


class _PynetdicomErrors(logging.Handler):
    """Collects pynetdicom's error log lines (they name the socket error: connection refused, timed out ...)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._records: list[tuple[int | None, str]] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("TCP Initialisation Error"):
            with self._guard:
                self._records.append((record.thread, message.removeprefix("TCP Initialisation Error: ")))

    def for_threads(self, idents: set[int | None]) -> list[str]:
        """Return the messages logged by the threads ``idents`` (one association's threads, not another flush's)."""
        with self._guard:
            return [message for thread, message in self._records if thread in idents]

    def __enter__(self) -> "_PynetdicomErrors":
        logging.getLogger("pynetdicom").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("pynetdicom").removeHandler(self)
