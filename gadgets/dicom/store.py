"""Send DICOM files to a DICOM node (C-STORE) through an outbox on disk, so nothing is lost when the node is down.

Every file to send is first copied into an :class:`Outbox` folder (written to a hidden temporary name, then renamed,
so the outbox never holds half a file). :meth:`Outbox.flush` C-STOREs every pending file over one association
(pynetdicom) and removes a file only once the node has answered that it stored it. A node that is down, refuses the
association or answers with a failure status leaves its files in the outbox, and ``qmri dicom-flush`` sends them by
hand later. Short timeouts keep a dead node from holding up the stream.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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

_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LOCK_NAME = ".flush.lock"


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
class FlushResult:
    """What one :meth:`Outbox.flush` did.

    Parameters
    ----------
    sent : Files the node stored; they left the outbox.
    kept : Files still in the outbox (node down, association rejected, failure status ...).
    errors : One line per problem, for people: what happened, with node, file and status.
    """

    sent: int
    kept: int
    errors: list[str] = field(default_factory=list)


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


class Outbox:
    """A folder of DICOM files waiting for a DICOM node; files leave it only once the node has stored them.

    Parameters
    ----------
    folder : The outbox folder; created when missing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

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
        _read_meta(path)  # a file the node could never take fails here, where the caller can see it
        target = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-{path.name}"
        fd, tmp_name = tempfile.mkstemp(dir=self.folder, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            tmp.replace(target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(self.folder)
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

        Parameters
        ----------
        node : The DICOM node.

        Returns
        -------
        Files sent and kept, and one line per problem.
        """
        with self._lock() as locked:
            files = self.pending()
            if not locked:
                message = f"another flush of outbox {self.folder} is running; {len(files)} file(s) left to it"
                log.warning("%s", message)
                return FlushResult(sent=0, kept=len(files), errors=[message])
            if not files:
                return FlushResult(sent=0, kept=0)
            errors: list[str] = []
            readable: list[_Pending] = []
            for path in files:
                try:
                    sop_class, syntax = _read_meta(path)
                except ValueError as exc:
                    errors.append(str(exc))
                    continue
                readable.append(_Pending(path, sop_class, syntax))
            sent = 0
            for batch in _batches(readable):
                batch_sent = _send_batch(node, batch, errors)
                if batch_sent is None:  # no association: the node will not take the later batches either
                    break
                sent += batch_sent
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
        return FlushResult(sent=sent, kept=kept, errors=errors)

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


def _read_meta(path: Path) -> tuple[str, str]:
    """Return the SOP class and transfer syntax UIDs from a DICOM file's meta; ValueError naming the file if absent."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable DICOM file ({exc})") from exc
    sop_class = meta.get("MediaStorageSOPClassUID")
    syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not syntax:
        raise ValueError(f"{path}: DICOM file meta lacks MediaStorageSOPClassUID or TransferSyntaxUID")
    return str(sop_class), str(syntax)


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


def _send_batch(node: DicomNode, files: list[_Pending], errors: list[str]) -> int | None:
    """C-STORE ``files`` over one association; remove each one the node stored; return how many that was.

    Returns None, with the reason in ``errors``, when no association was made.
    """
    ae = AE(ae_title=node.calling_ae)
    ae.connection_timeout = CONNECT_TIMEOUT_S
    ae.acse_timeout = ASSOCIATION_TIMEOUT_S
    ae.dimse_timeout = RESPONSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    with _PynetdicomErrors() as causes:
        try:
            assoc = ae.associate(node.host, node.port, contexts=_contexts(files), ae_title=node.called_ae)
        except (OSError, ValueError, RuntimeError) as exc:  # host name that does not resolve, invalid UID ...
            errors.append(f"cannot reach {node} ({exc}); {len(files)} file(s) kept")
            return None
    if not assoc.is_established:
        threads = {assoc.ident, assoc.dul.ident}  # pynetdicom connects from the association's DUL thread
        errors.append(_why_no_association(node, assoc, causes.for_threads(threads), len(files)))
        return None
    sent = 0
    try:
        for number, item in enumerate(files, start=1):
            if not assoc.is_established:
                errors.append(f"DICOM node {node}: association lost; {len(files) - number + 1} file(s) kept")
                break
            sent += _store_one(node, assoc, item, number, errors)
    finally:
        if assoc.is_established:
            assoc.release()
    return sent


def _store_one(node: DicomNode, assoc: Association, item: _Pending, message_id: int, errors: list[str]) -> int:
    """C-STORE one file; remove it when stored and return 1, else add the reason to ``errors`` and return 0."""
    try:
        status = assoc.send_c_store(item.path, msg_id=message_id % 65536)
    except FileNotFoundError:
        log.debug("%s left the outbox during the flush (another process sent it)", item.path)
        return 0
    except ValueError as exc:  # pynetdicom: no accepted presentation context, or the dataset cannot be encoded
        errors.append(
            f"{item.path.name}: not sent to {node}: {exc} (SOP class {item.sop_class}, syntax {item.transfer_syntax})"
        )
        return 0
    except (InvalidDicomError, OSError, EOFError, AttributeError) as exc:
        errors.append(f"{item.path.name}: not sent to {node}: cannot read it ({exc})")
        return 0
    code = status.get("Status")
    if code is None:
        errors.append(f"{item.path.name}: no C-STORE response from {node} (timed out or association aborted)")
        return 0
    category, description = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code) or ("Unknown", "")
    if code == 0x0000 or code in SAFE_WARNINGS:
        if code != 0x0000:
            log.warning("%s: stored by %s with warning 0x%04X (%s)", item.path.name, node, code, description)
        item.path.unlink(missing_ok=True)
        return 1
    errors.append(f"{item.path.name}: C-STORE status 0x{code:04X} from {node} ({category}: {description})")
    return 0


def _why_no_association(node: DicomNode, assoc: Association, causes: list[str], n_files: int) -> str:
    """Return, for people, why no association with ``node`` was made."""
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        reason = f"{answer.result_str}, {answer.source_str}: {answer.reason_str}" if answer is not None else "rejected"
        what = f"association rejected by {node} ({reason}); right called AE? does it accept AE {node.calling_ae}?"
    elif causes:
        what = f"cannot reach {node} ({'; '.join(causes)})"
    elif assoc.rejected_contexts and not assoc.accepted_contexts:
        offered = ", ".join(sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        what = f"{node} takes none of the SOP classes / transfer syntaxes offered ({offered}); association aborted"
    else:
        what = f"no association with {node} (node down, not answering within {ASSOCIATION_TIMEOUT_S:g} s, or aborted)"
    return f"{what}; {n_files} file(s) kept"


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
