"""Replay an ISMRMRD HDF5 raw file through a chain, offline, writing the images to an MRD file."""

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
from tqdm import tqdm

from gadgets.runtime.chain import Chain
from gadgets.runtime.output_file import OutputFile
from gadgets.runtime.pipeline import run_chain
from gadgets.runtime.protocol import parse_header
from qmri_models.ismrmrd_hdf5 import read_acquisitions, read_waveforms

log = logging.getLogger(__name__)


def raw_items(group: h5py.Group) -> Iterator[Any]:
    """Yield a raw file's readouts, with any waveforms merged in by time stamp, as a scanner would send them.

    Parameters
    ----------
    group : The ISMRMRD dataset group.

    Yields
    ------
    Acquisitions and waveforms.
    """
    waveforms = sorted(read_waveforms(group), key=lambda w: w.time_stamp)
    pending = iter(waveforms)
    next_wave = next(pending, None)
    for acq in read_acquisitions(group):
        while next_wave is not None and next_wave.time_stamp <= acq.acquisition_time_stamp:
            yield next_wave
            next_wave = next(pending, None)
        yield acq
    if next_wave is not None:
        yield next_wave
        yield from pending


def replay(raw: Path, chain: Chain, out_dir: Path, *, group: str = "dataset", progress: bool = True) -> Path:
    """Run a raw file through a chain and write every output to ``out_dir/images.h5``.

    Parameters
    ----------
    raw : ISMRMRD HDF5 raw file.
    chain : The validated chain.
    out_dir : Output directory (created).
    group : The raw file's dataset group; also the output file's group.
    progress : Show a progress bar on stderr.

    Returns
    -------
    Path of the images file.

    Raises
    ------
    ValueError
        If the raw file has no such group or header.
    StreamError
        If a gadget failed; what was written so far stays in the file.
    """
    out = Path(out_dir) / "images.h5"
    with h5py.File(raw, "r") as f:
        if group not in f or "xml" not in f[group]:
            raise ValueError(f"{raw}: no ISMRMRD dataset '{group}' with an xml header (groups: {', '.join(f)})")
        xml = f[group]["xml"][0]
        header_xml = xml.decode() if isinstance(xml, bytes) else str(xml)
        header = parse_header(header_xml)
        n_readouts = f[group]["data"].shape[0] if "data" in f[group] else 0
        items = tqdm(
            raw_items(f[group]), total=n_readouts, unit="readout", desc=f"replay {Path(raw).name}", disable=not progress
        )
        with OutputFile(out, header_xml, group=group) as output:
            run_chain(chain, header, items, output.write, stream=f"replay {raw}", output_dir=Path(out_dir))
    summary = ", ".join(f"{n} {key}" for key, n in sorted(output.counts.items())) or "nothing"
    log.info("replay of %s through '%s' wrote %s to %s", raw, chain.name, summary, out)
    for text in output.texts:
        log.info("chain message: %s", text)
    return out
