"""Gadgetron's own types at our boundaries: a slice's k-space as ``ReconData``, its phase images as ``ImageArray``.

Gadgetron's BucketToBufferGadget sends ``ReconData``: per encoding space a buffer whose data are
`(RO, E1, E2, CHA, N, S, LOC)` complex64 (N the phase dimension, ``N_dimension``), the header of every readout at
`(E1, E2, N, S, LOC)` (zero where none was acquired), an optional reference (calibration) buffer of the same layout and
a sampling description. Gadgetron's generic reconstructions send ``ImageArray``: images `(RO, E1, E2, CHA, N, S, LOC)`
with an image header and a meta container per `(N, S, LOC)`. gadgetron-python reads and writes both with numpy
arrays in Gadgetron's (Fortran) dimension order, which is what these functions take and return.

The conversions are exact both ways for what our items hold, so a chain split at these boundaries computes what the
whole chain computes. Rich content that Gadgetron has no place for (MC samples, per-phase uncertainty, coil maps)
never crosses a process boundary; it stays inside one chain.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any

import ismrmrd
import numpy as np
from gadgetron.types.image_array import ImageArray
from gadgetron.types.recon_data import ReconBit, ReconBuffer, ReconData, SamplingDescription

from gadgets.image_meta import ImageMeaning, meaning_from_meta, meta_text
from gadgets.items import PhaseImages, SliceBuffer, SliceContext

log = logging.getLogger(__name__)

PrepTimes = Callable[[Any, list[ismrmrd.Acquisition]], np.ndarray]
"""Preparation time (ms) of every phase, from the stream's header and the first readout of each phase."""


def slice_buffer_to_recon_data(buffer: SliceBuffer, header: Any) -> ReconData:
    """Return one slice's k-space as Gadgetron's ``ReconData`` (as BucketToBufferGadget makes it).

    Parameters
    ----------
    buffer : The slice's k-space, readout headers and context.
    header : The stream's ISMRMRD header (encoded field of view).

    Returns
    -------
    One bit: the data buffer `(kx, ky, 1, coils, phases, 1, 1)` and, when the slice has calibration lines, a
    reference buffer of the same layout holding only those lines.
    """
    data = buffer.kdata.transpose(3, 2, 1, 0)[:, :, None, :, :, None, None]
    headers = _header_array(buffer.readout_headers)
    sampling = _sampling(buffer, header, np.asarray(buffer.sampled.any(axis=0)))
    bit = ReconBit(ReconBuffer(np.asfortranarray(data), None, None, headers, sampling))
    lines = buffer.calibration_lines
    if lines.size:
        ref_data = np.zeros_like(data)
        ref_data[:, lines] = data[:, lines]
        ref_headers = np.full(buffer.readout_headers.shape, None, dtype=object)
        ref_headers[:, lines] = buffer.readout_headers[:, lines]
        in_ref = np.zeros(buffer.sampled.shape[1], dtype=bool)
        in_ref[lines] = True
        bit.ref = ReconBuffer(
            np.asfortranarray(ref_data), None, None, _header_array(ref_headers), _sampling(buffer, header, in_ref)
        )
    return ReconData([bit])


def recon_data_to_slice_buffers(recon_data: ReconData, header: Any, prep_times: PrepTimes) -> list[SliceBuffer]:
    """Return the slices of a Gadgetron ``ReconData`` as our SliceBuffers, one per `(S, LOC)` of every bit.

    Readouts are placed by their headers' ``kspace_encode_step_1``; lines of the reference buffer that the data
    buffer lacks (separate calibration scans) are added to the k-space, as our buffer does with them.

    Parameters
    ----------
    recon_data : What BucketToBufferGadget sent.
    header : The stream's ISMRMRD header (reconstructed matrix and field of view).
    prep_times : The phases' preparation times in ms from the header and each phase's first readout.

    Returns
    -------
    The slices, in bit order then location order.

    Raises
    ------
    ValueError
        For 3D (E2 > 1) or non-Cartesian buffers, or a buffer without any acquired readout.
    """
    buffers = []
    for bit in recon_data.bits:
        data, headers = bit.data.data, bit.data.headers
        if data.ndim != 7 or data.shape[2] != 1:
            raise ValueError(f"ReconData buffer of shape {data.shape}: only 2D Cartesian (E2 = 1) buffers are handled")
        if bit.data.trajectory is not None:
            raise ValueError("ReconData buffer carries a k-space trajectory; only Cartesian buffers are handled")
        for s in range(data.shape[5]):
            for loc in range(data.shape[6]):
                ref = None
                if bit.ref is not None:
                    ref = (bit.ref.data[:, :, 0, :, :, s, loc], bit.ref.headers[:, 0, :, s, loc])
                buffers.append(
                    _slice_buffer(data[:, :, 0, :, :, s, loc], headers[:, 0, :, s, loc], ref, header, prep_times)
                )
    return buffers


def phase_images_to_image_array(item: PhaseImages) -> ImageArray:
    """Return a slice's phase images as a Gadgetron ``ImageArray``, each phase's meaning in its meta.

    Parameters
    ----------
    item : The phase images (their per-phase uncertainty and MC samples do not cross).

    Returns
    -------
    Images `(x, y, 1, 1, phases, 1, 1)` complex64, one image header and one meta container per phase.
    """
    images = item.images.astype(np.complex64).transpose(2, 1, 0)[:, :, None, None, :, None, None]
    n_phases = item.images.shape[0]
    headers = np.empty((n_phases, 1, 1), dtype=object)
    references = np.empty((n_phases, 1, 1), dtype=object)
    meta = []
    for phase in range(n_phases):
        image = ismrmrd.Image.from_array(item.images[phase], acquisition=item.references[phase], transpose=False)
        image.slice = item.slice
        image.set = phase
        image.field_of_view[:] = item.field_of_view_mm
        headers[phase, 0, 0] = image.getHead()
        references[phase, 0, 0] = item.references[phase].getHead()
        prep_ms = float(item.prep_times_ms[phase])
        meta.append(meta_text(ImageMeaning(phase_index=phase, prep_time_ms=prep_ms)))
    return ImageArray(data=np.asfortranarray(images), headers=headers, meta=meta, acq_headers=references)


def image_array_to_phase_images(array: ImageArray, header: Any, prep_times: PrepTimes) -> list[PhaseImages]:
    """Return the slices of a Gadgetron ``ImageArray`` (N the phases) as our PhaseImages, one per `(S, LOC)`.

    Each phase's preparation time is its meta's, when the array came from us; otherwise ``prep_times`` reads the
    header and the image headers (their ``user_int[7]`` as Gadgetron copies it from the readouts).

    Parameters
    ----------
    array : What a Gadgetron reconstruction sent: images `(RO, E1, E2, CHA, N, S, LOC)`.
    header : The stream's ISMRMRD header.
    prep_times : The phases' preparation times in ms from the header and each phase's readout header.

    Returns
    -------
    The slices' phase images `(phases, y, x)` complex64.

    Raises
    ------
    ValueError
        For 3D images or more than one channel.
    """
    data = array.data
    if data.ndim != 7 or data.shape[2] != 1 or data.shape[3] != 1:
        raise ValueError(f"ImageArray of shape {data.shape}: only 2D coil-combined images (E2 = CHA = 1) are handled")
    n_phases = data.shape[4]
    slices = []
    for s in range(data.shape[5]):
        for loc in range(data.shape[6]):
            images = np.ascontiguousarray(data[:, :, 0, 0, :, s, loc].transpose(2, 1, 0)).astype(np.complex64)
            heads = [array.headers[n, s, loc] for n in range(n_phases)]
            metas = [_meta(array.meta, (n, s, loc), data.shape[4:]) for n in range(n_phases)]
            references = [_acquisition_like(array, head, (n, s, loc)) for n, head in enumerate(heads)]
            stored = [meaning_from_meta(meta).prep_time_ms for meta in metas]
            times = (
                np.array(stored, dtype=float)
                if all(t is not None for t in stored)
                else np.asarray(prep_times(header, references), dtype=float)
            )
            fov = tuple(float(v) for v in heads[0].field_of_view)
            slices.append(
                PhaseImages(
                    images=images,
                    prep_times_ms=times,
                    context=SliceContext(int(heads[0].slice), references, (fov[0], fov[1], fov[2])),
                )
            )
    return slices


def _slice_buffer(
    data: np.ndarray,
    headers: np.ndarray,
    ref: tuple[np.ndarray, np.ndarray] | None,
    header: Any,
    prep_times: PrepTimes,
) -> SliceBuffer:
    """Return one slice's SliceBuffer from data `(RO, E1, CHA, N)` and headers `(E1, N)` (and the reference's)."""
    n_x, _, n_coils, n_phases = data.shape
    encoding = header.encoding[0]
    n_y = int(encoding.encodedSpace.matrixSize.y)
    limit = encoding.encodingLimits.kspace_encoding_step_1 if encoding.encodingLimits is not None else None
    if limit is not None:
        n_y = max(n_y, int(limit.maximum) + 1)
    kdata = np.zeros((n_phases, n_coils, n_y, n_x), dtype=np.complex64)
    sampled = np.zeros((n_phases, n_y), dtype=bool)
    line_headers = np.full((n_phases, n_y), None, dtype=object)
    calibration: set[int] = set()
    sources = [(data, headers, False)] + ([] if ref is None else [(ref[0], ref[1], True)])
    for values, heads, is_ref in sources:
        for row in range(heads.shape[0]):
            for phase in range(n_phases):
                head = heads[row, phase]
                if head is None or head.number_of_samples == 0:
                    continue
                line = int(head.idx.kspace_encode_step_1)
                if not 0 <= line < n_y:
                    raise ValueError(f"ReconData readout {head.scan_counter} has line {line}, outside 0..{n_y - 1}")
                if is_ref:
                    calibration.add(line)
                if sampled[phase, line]:
                    continue
                kdata[phase, :, line] = values[:, row, :, phase].T
                sampled[phase, line] = True
                line_headers[phase, line] = head
    missing = [p for p in range(n_phases) if not sampled[p].any()]
    if missing:
        raise ValueError(f"ReconData has no acquired readout for phases {missing} (N dimension)")
    first = [min((h for h in line_headers[p] if h is not None), key=_acquired_order) for p in range(n_phases)]
    references = [ismrmrd.Acquisition(head) for head in first]
    recon = encoding.reconSpace
    return SliceBuffer(
        kdata=kdata,
        sampled=sampled,
        calibration_lines=np.array(sorted(calibration), dtype=int),
        prep_times_ms=np.asarray(prep_times(header, references), dtype=float),
        context=SliceContext(
            int(first[0].idx.slice),
            references,
            (recon.fieldOfView_mm.x, recon.fieldOfView_mm.y, recon.fieldOfView_mm.z),
        ),
        recon_matrix=(int(recon.matrixSize.y), int(recon.matrixSize.x)),
        readout_headers=line_headers,
    )


def _acquired_order(head: ismrmrd.AcquisitionHeader) -> tuple[int, int]:
    """Return a readout header's place in acquisition order: its scan counter, then its time stamp."""
    return int(head.scan_counter), int(head.acquisition_time_stamp)


def _header_array(line_headers: np.ndarray) -> np.ndarray:
    """Return readout headers `(phases, ky)` as Gadgetron's `(E1, E2, N, S, LOC)` array, zero headers where none."""
    n_phases, n_y = line_headers.shape
    headers = np.empty((n_y, 1, n_phases, 1, 1), dtype=object)
    for phase in range(n_phases):
        for line in range(n_y):
            head = line_headers[phase, line]
            headers[line, 0, phase, 0, 0] = ismrmrd.AcquisitionHeader() if head is None else head
    return headers


def _sampling(buffer: SliceBuffer, header: Any, lines: np.ndarray) -> SamplingDescription:
    """Return the sampling description of a buffer whose acquired lines are ``lines`` `(ky,)` bool."""
    encoded = header.encoding[0].encodedSpace
    n_x, n_y = buffer.kdata.shape[3], buffer.kdata.shape[2]
    acquired = np.flatnonzero(lines)
    sampling = SamplingDescription()
    sampling.encoded_FOV[:] = (encoded.fieldOfView_mm.x, encoded.fieldOfView_mm.y, encoded.fieldOfView_mm.z)
    sampling.recon_FOV[:] = buffer.field_of_view_mm
    sampling.encoded_matrix[:] = (n_x, n_y, 1)
    sampling.recon_matrix[:] = (buffer.recon_matrix[1], buffer.recon_matrix[0], 1)
    sampling.sampling_limits[0].min, sampling.sampling_limits[0].center, sampling.sampling_limits[0].max = (
        0,
        n_x // 2,
        n_x - 1,
    )
    if acquired.size:
        sampling.sampling_limits[1].min = int(acquired[0])
        sampling.sampling_limits[1].max = int(acquired[-1])
    sampling.sampling_limits[1].center = n_y // 2
    return sampling


def _meta(meta: Sequence[str] | None, index: tuple[int, int, int], shape: tuple[int, ...]) -> str:
    """Return the meta text of image ``index`` `(N, S, LOC)` (Gadgetron orders them with N fastest), or empty."""
    if not meta:
        return ""
    n, s, loc = index
    return meta[n + shape[0] * (s + shape[1] * loc)]


def _acquisition_like(array: ImageArray, head: ismrmrd.ImageHeader, index: tuple[int, int, int]) -> ismrmrd.Acquisition:
    """Return the readout an image's geometry came from: its acquisition header when sent, else one built from it."""
    if array.acq_headers is not None:
        return ismrmrd.Acquisition(array.acq_headers[index])
    acquisition = ismrmrd.Acquisition()
    for name in ("version", "measurement_uid", "acquisition_time_stamp", "user_int", "user_float"):
        setattr(acquisition, name, getattr(head, name))
    for name in ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position", "physiology_time_stamp"):
        getattr(acquisition, name)[:] = getattr(head, name)
    acquisition.idx.slice = head.slice
    acquisition.idx.set = head.set
    return acquisition
