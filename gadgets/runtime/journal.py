"""Journal: every incoming stream written to an ISMRMRD HDF5 file as it arrives, so any scan can be replayed."""

import logging
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import ismrmrd

from qmri_models.ismrmrd_hdf5 import acquisition_rows, append_rows, waveform_rows, write_header

log = logging.getLogger(__name__)

FLUSH_EVERY_ITEMS = 32
FLUSH_EVERY_S = 0.5


class Journal:
    """An ISMRMRD HDF5 file that grows with the stream and is flushed every few readouts or half second."""

    def __init__(self, directory: Path, header_xml: str, protocol: str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", protocol or "unnamed")[:80]
        self.path = directory / f"{safe}_{stamp}.h5"
        self._file = h5py.File(self.path, "w")
        self._group = self._file.create_group("dataset")
        write_header(self._group, header_xml)
        self._file.flush()
        self._acquisitions: list[ismrmrd.Acquisition] = []
        self._waveforms: list[ismrmrd.Waveform] = []
        self._last_flush = time.monotonic()
        self._warned_images = False

    def record(self, items: Iterable[Any]) -> Iterator[Any]:
        """Yield ``items`` unchanged, writing each to the journal before it goes on to the chain."""
        for item in items:
            if isinstance(item, ismrmrd.Acquisition):
                self._acquisitions.append(item)
            elif isinstance(item, ismrmrd.Waveform):
                self._waveforms.append(item)
            elif not self._warned_images:
                self._warned_images = True
                log.warning("journal %s records readouts and waveforms only, not %s", self.path, type(item).__name__)
            pending = len(self._acquisitions) + len(self._waveforms)
            if pending >= FLUSH_EVERY_ITEMS or time.monotonic() - self._last_flush > FLUSH_EVERY_S:
                self.flush()
            yield item

    def flush(self) -> None:
        """Write what is pending and flush the file to disk (nothing once closed: a failed stream's reader may lag)."""
        if not self._file.id.valid:
            return
        append_rows(self._group, "data", acquisition_rows(self._acquisitions))
        append_rows(self._group, "waveforms", waveform_rows(self._waveforms))
        self._acquisitions.clear()
        self._waveforms.clear()
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the file."""
        if self._file.id.valid:
            self.flush()
            self._file.close()
            log.info("journal written: %s", self.path)
