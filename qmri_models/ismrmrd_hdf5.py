"""Fast batched appends of readouts to ISMRMRD HDF5 groups, in the exact layout ``ismrmrd.Dataset`` reads.

``ismrmrd.Dataset.append_acquisition`` resizes the dataset once per readout; writing rows in batches keeps a
simulated scan or a journaled stream fast while staying readable by ismrmrd, Gadgetron and the ismrmrd tools.
"""

from collections.abc import Iterator, Sequence

import h5py
import ismrmrd
import numpy as np
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype, waveform_dtype, waveform_header_dtype


def acquisition_rows(acquisitions: Sequence[ismrmrd.Acquisition]) -> np.ndarray:
    """Return the HDF5 rows of the given readouts.

    Parameters
    ----------
    acquisitions : Readouts.

    Returns
    -------
    Rows. Shape `(n,)` with ``ismrmrd.hdf5.acquisition_dtype``.
    """
    rows = np.empty(len(acquisitions), dtype=acquisition_dtype)
    for i, acq in enumerate(acquisitions):
        rows[i]["head"] = np.frombuffer(acq.getHead(), dtype=acquisition_header_dtype)[0]
        rows[i]["data"] = acq.data.view(np.float32).ravel()
        rows[i]["traj"] = acq.traj.astype(np.float32).ravel()
    return rows


def waveform_rows(waveforms: Sequence[ismrmrd.Waveform]) -> np.ndarray:
    """Return the HDF5 rows of the given waveforms.

    Parameters
    ----------
    waveforms : Waveforms.

    Returns
    -------
    Rows. Shape `(n,)` with ``ismrmrd.hdf5.waveform_dtype``.
    """
    rows = np.empty(len(waveforms), dtype=waveform_dtype)
    for i, wav in enumerate(waveforms):
        rows[i]["head"] = np.frombuffer(wav.getHead(), dtype=waveform_header_dtype)[0]
        rows[i]["data"] = wav.data.view(np.uint32).ravel()
    return rows


def append_rows(group: h5py.Group, name: str, rows: np.ndarray) -> None:
    """Append rows to the resizable dataset ``name`` of ``group``, creating it on first use.

    Parameters
    ----------
    group : ISMRMRD dataset group (e.g. ``/dataset``).
    name : ``data`` for readouts, ``waveforms`` for waveforms.
    rows : Rows from :func:`acquisition_rows` or :func:`waveform_rows`. Shape `(n,)`.
    """
    if not len(rows):
        return
    if name not in group:
        group.create_dataset(name, data=rows, maxshape=(None,), chunks=True)
        return
    dataset = group[name]
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


def write_header(group: h5py.Group, xml: str) -> None:
    """Write the ISMRMRD XML header of a dataset group, as ``ismrmrd.Dataset.write_xml_header`` does.

    Parameters
    ----------
    group : ISMRMRD dataset group.
    xml : Header text.
    """
    group.create_dataset("xml", data=[xml.encode()], dtype=h5py.special_dtype(vlen=bytes))


def read_acquisitions(group: h5py.Group, *, block: int = 512) -> Iterator[ismrmrd.Acquisition]:
    """Yield the readouts of an ISMRMRD dataset group in file order, reading ``block`` rows at a time.

    Parameters
    ----------
    group : ISMRMRD dataset group (e.g. ``/dataset``).
    block : Rows read per HDF5 access.

    Yields
    ------
    Readouts.
    """
    if "data" not in group:
        return
    dataset = group["data"]
    for start in range(0, dataset.shape[0], block):
        for row in dataset[start : start + block]:
            acq = ismrmrd.Acquisition(row["head"])
            acq.data[:] = row["data"].view(np.complex64).reshape(acq.active_channels, acq.number_of_samples)
            if acq.traj.size:
                acq.traj[:] = row["traj"].reshape(acq.number_of_samples, acq.trajectory_dimensions)
            yield acq


def read_waveforms(group: h5py.Group) -> list[ismrmrd.Waveform]:
    """Return the waveforms of an ISMRMRD dataset group (empty if it has none).

    Parameters
    ----------
    group : ISMRMRD dataset group.

    Returns
    -------
    Waveforms in file order.
    """
    if "waveforms" not in group:
        return []
    waveforms = []
    for row in group["waveforms"][:]:
        wav = ismrmrd.Waveform(row["head"])
        wav.data[:] = row["data"].reshape(wav.channels, wav.number_of_samples)
        waveforms.append(wav)
    return waveforms
