"""Replay an ISMRMRD HDF5 raw file through a chain, offline, writing the images to an MRD file."""

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
from tqdm import tqdm

from gadgets.runtime.chain import Chain
from gadgets.runtime.header_check import check_header
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

    A replay that fails leaves nothing behind: ``images.h5`` is written under a temporary name and renamed at the
    end, and the files the chain wrote (DICOM, outbox) during a failed replay are removed again.

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
        If a gadget failed.
    """
    out_dir = Path(out_dir)
    out = out_dir / "images.h5"
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.rglob("*"))
    partial = out_dir / f".images-{uuid.uuid4().hex[:8]}.h5.partial"
    try:
        output = _run(raw, chain, out_dir, partial, group=group, progress=progress)
        partial.replace(out)
    except BaseException:
        _remove_new(out_dir, before, remove_folder=created)
        raise
    summary = ", ".join(f"{n} {key}" for key, n in sorted(output.counts.items())) or "nothing"
    log.info("replay of %s through '%s' wrote %s to %s", raw, chain.name, summary, out)
    for text in output.texts:
        log.info("chain message: %s", text)
    return out


def _run(raw: Path, chain: Chain, out_dir: Path, images: Path, *, group: str, progress: bool) -> OutputFile:
    """Run the raw file through the chain, the images into ``images``; return the closed output file."""
    try:
        f = h5py.File(raw, "r")
    except OSError as exc:
        raise ValueError(f"{raw}: cannot open it as an ISMRMRD HDF5 raw file ({exc})") from exc
    with f:
        if group not in f or "xml" not in f[group]:
            raise ValueError(f"{raw}: no ISMRMRD dataset '{group}' with an xml header (groups: {', '.join(f)})")
        xml = f[group]["xml"][0]
        header_xml = xml.decode() if isinstance(xml, bytes) else str(xml)
        header = parse_header(header_xml)
        check_header(header)
        n_readouts = f[group]["data"].shape[0] if "data" in f[group] else 0
        items = tqdm(
            raw_items(f[group]), total=n_readouts, unit="readout", desc=f"replay {Path(raw).name}", disable=not progress
        )
        with OutputFile(images, header_xml, group=group) as output:
            run_chain(chain, header, items, output.write, stream=f"replay {raw}", output_dir=out_dir)
    return output


def _remove_new(out_dir: Path, before: set[Path], *, remove_folder: bool) -> None:
    """Remove every file and folder under ``out_dir`` that is not in ``before`` (what a failed replay wrote)."""
    for path in sorted(set(out_dir.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    if remove_folder:
        with contextlib.suppress(OSError):
            out_dir.rmdir()
