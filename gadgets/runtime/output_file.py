"""The MRD images file that replay writes: ``/<group>/image_<series>/{data,header,attributes}`` and ``/<group>/xml``.

The layout is what MRD clients (python-ismrmrd-server's client, Gadgetron's client) write, read by
``ismrmrd.Dataset.read_image``. Every series holds images of one shape.
"""

from pathlib import Path
from types import TracebackType
from typing import Any

import ismrmrd


class OutputFile:
    """Collects a stream's output items into an MRD HDF5 file."""

    def __init__(self, path: Path, header_xml: str, *, group: str = "dataset") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.group = group
        self._dataset = ismrmrd.Dataset(str(self.path), group, create_if_needed=True)
        self._dataset.write_xml_header(header_xml)
        self._shapes: dict[int, tuple[int, ...]] = {}
        self.counts: dict[str, int] = {}
        self.texts: list[str] = []

    def write(self, item: Any) -> None:
        """Store one output item: images by series, readouts as data, text kept for the caller.

        Raises
        ------
        ValueError
            If an image's shape differs from earlier images of its series.
        TypeError
            For an item that is not an MRD message type.
        """
        if isinstance(item, ismrmrd.Image):
            series = int(item.image_series_index)
            shape = tuple(item.data.shape)
            if self._shapes.setdefault(series, shape) != shape:
                raise ValueError(f"series {series} mixes image shapes {self._shapes[series]} and {shape}")
            self._dataset.append_image(f"image_{series}", item)
            key = f"image_{series}"
        elif isinstance(item, ismrmrd.Acquisition):
            self._dataset.append_acquisition(item)
            key = "acquisitions"
        elif isinstance(item, ismrmrd.Waveform):
            self._dataset.append_waveform(item)
            key = "waveforms"
        elif isinstance(item, str):
            self.texts.append(item)
            key = "texts"
        else:
            raise TypeError(
                f"the chain's last gadget sent a {type(item).__name__}, which is not an MRD message; "
                "end the chain with a gadget that sends images"
            )
        self.counts[key] = self.counts.get(key, 0) + 1

    def close(self) -> None:
        """Close the file."""
        self._dataset.close()

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
