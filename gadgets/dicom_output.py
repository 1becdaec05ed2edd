"""DICOM output: every MRD image written as DICOM as it arrives, and C-STORE of the files to a DICOM node.

Structure reports (JSON text of StructureReportGadget) become DICOM Structured Reports that reference the slice's map
(``gadgets.dicom.structured_report``); the text goes on to the client too.

The images go on to the client unchanged. Each image is on disk before it is passed on, so a stream that fails later
loses no file. With a node set, every file is also copied to an outbox folder and the outbox is flushed (C-STORE)
after each slice, every :data:`FLUSH_EVERY_FILES` files and at the end of the stream. A node that is down never fails
the stream: its files wait in the outbox, and the client gets one WARNING text saying how to send them later.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import ismrmrd

from gadgets.dicom.files import DicomSeriesWriter
from gadgets.dicom.store import DicomNode, Outbox
from gadgets.dicom.structured_report import StructuredReportWriter
from gadgets.runtime.config import GadgetConfig, PropertyError, prop
from gadgets.runtime.output_folder import inside
from gadgets.runtime.registry import GadgetConnection, register
from gadgets.structure_report import is_structure_report

log = logging.getLogger(__name__)

FLUSH_EVERY_FILES = 32
"""Files added to the outbox before a flush even when the slice has not changed (3D or many-phase slices)."""


@dataclass(frozen=True)
class DicomOutputConfig(GadgetConfig):
    """Properties of DicomOutputGadget."""

    folder: str = prop(
        "dicom", "folder for the DICOM files, inside the output folder (replay --out, serve --output)", site=True
    )
    node_host: str = prop("", "host of a DICOM node to C-STORE every file to; empty: write files only", site=True)
    node_port: int = prop(104, "DICOM port of the node", minimum=1, maximum=65535, site=True)
    called_ae: str = prop(DicomNode.called_ae, "AE title of the node", site=True)
    calling_ae: str = prop(DicomNode.calling_ae, "our AE title, as the node knows us", site=True)
    outbox: str = prop(
        "dicom_outbox",
        "folder of files waiting for the node, inside the output folder (qmri dicom-flush)",
        site=True,
    )

    def __post_init__(self) -> None:
        for name in ("called_ae", "calling_ae"):
            try:
                DicomNode("localhost", self.node_port, **{name: getattr(self, name)})
            except ValueError as exc:
                raise PropertyError(name, str(exc)) from exc

    def node(self) -> DicomNode | None:
        """Return the DICOM node to send to, or None when ``node_host`` is empty."""
        if not self.node_host.strip():
            return None
        return DicomNode(self.node_host.strip(), self.node_port, called_ae=self.called_ae, calling_ae=self.calling_ae)


@register("DicomOutputGadget", DicomOutputConfig, consumes=(ismrmrd.Image, str), produces=(ismrmrd.Image, str))
def dicom_output(connection: GadgetConnection) -> None:
    """Write every MRD image as DICOM (maps as Parametric Maps), structure reports as SRs; pass all on; C-STORE too."""
    config = DicomOutputConfig.from_connection(connection)
    output_dir = Path(getattr(connection, "output_dir", None) or Path.cwd())
    writer = DicomSeriesWriter(connection.header, inside(output_dir, config.folder, "folder"))
    node = config.node()
    sender = _NodeSender(node, Outbox(inside(output_dir, config.outbox, "outbox"))) if node is not None else None
    reports = StructuredReportWriter(writer.folder, writer.nonce)
    n_files, slice_index = 0, 0
    connection.filter(lambda item: isinstance(item, ismrmrd.Image) or is_structure_report(item))
    for item in connection:
        if isinstance(item, ismrmrd.Image):
            paths = writer.write(item)
            paths += reports.image_written(item, paths)
            slice_index = item.slice
        else:
            paths = reports.report(item)
        n_files += len(paths)
        if sender is not None:
            sender.add(paths, slice_index)
        connection.send(item)
    log.info("wrote %d DICOM file(s) to %s", n_files, writer.folder)
    if reports.waiting:
        log.warning("no map was written for the structure reports of (slice, map) %s: no SR for them", reports.waiting)
    if sender is not None:
        warning = sender.finish()
        if warning is not None:
            log.warning("%s", warning)
            try:
                connection.send(warning)
            except TypeError:  # gadgetron-python's connection has no writer for text; the log above has it
                log.debug("text message not sent: this connection cannot send text")


class _NodeSender:
    """Copies written files to the outbox and flushes it to the node per slice, every few files and at the end.

    After a flush that kept files (node down), only the flush at the end of the stream tries again, so a dead node
    costs the stream one connection timeout, not one per slice.
    """

    def __init__(self, node: DicomNode, outbox: Outbox) -> None:
        self.node = node
        self.outbox = outbox
        self._slice: int | None = None
        self._unflushed = 0
        self._node_failed = False

    def add(self, paths: list[Path], slice_index: int) -> None:
        """Add one image's files; flush first when the image starts a new slice."""
        if self._slice is not None and slice_index != self._slice:
            self._flush()
        self._slice = slice_index
        for path in paths:
            self.outbox.add(path)
        self._unflushed += len(paths)
        if self._unflushed >= FLUSH_EVERY_FILES:
            self._flush()

    def _flush(self) -> None:
        """Send the outbox unless the node already failed in this stream."""
        if self._node_failed or not self._unflushed:
            return
        self._unflushed = 0
        result = self.outbox.flush(self.node)
        self._node_failed = result.kept > 0

    def finish(self) -> str | None:
        """Flush at the end of the stream; return the one WARNING text for the client when files stay, else None."""
        result = self.outbox.flush(self.node)
        if not result.kept:
            return None
        node = self.node
        why = f" ({result.errors[0]})" if result.errors else ""
        return (
            f"WARNING DICOM node {node.host}:{node.port} ({node.called_ae}) did not store every file{why}: "
            f"{result.kept} files kept in {self.outbox.folder}; retry with `qmri dicom-flush {self.outbox.folder} "
            f"--host {node.host} --port {node.port} --called-ae {node.called_ae} --calling-ae {node.calling_ae}`"
        )
