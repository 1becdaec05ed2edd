"""Our chains inside Gadgetron: this test plays Gadgetron's part exactly as it behaves with an external gadget.

Gadgetron listens on a port, starts ``python -m gadgetron PORT MODULE TARGET``, waits for it to connect, sends the
external's configuration, the header and its stream's items (Acquisitions, or ReconData as BucketToBufferGadget makes
it) with gadgetron-python's own writers, and reads back what the external sends until it closes. The maps must equal
``qmri replay``'s bit for bit; PUQ's, whose torch work is bit for bit only within one process and thread team, to
rounding (``tests.conftest.ROUNDING``).
"""

import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import tostring

import ismrmrd
import numpy as np
import pytest
from defusedxml.ElementTree import fromstring
from gadgetron.external import constants
from gadgetron.external.connection import Connection
from gadgetron.external.readers import read, read_image
from gadgetron.external.writers import write_acquisition, write_byte_string
from gadgetron.types.image_array import ImageArray, read_image_array, write_image_array
from gadgetron.types.recon_data import (
    ReconBit,
    ReconBuffer,
    ReconData,
    SamplingDescription,
    read_recon_data,
    write_recon_data,
)

from gadgets.buffering import AcquisitionBufferConfig, SliceBufferBuilder
from gadgets.evaluate import read_series, series_in
from gadgets.fitting import ParameterFitConfig, fit_slice
from gadgets.gadgetron_types import phase_images_to_image_array
from gadgets.output import MapSeriesConfig, map_images_to_mrd
from gadgets.recon import CartesianReconConfig, reconstruct_slice
from gadgets.runtime.chain import parse_chain, resolve_chain
from gadgets.runtime.pipeline import run_chain
from gadgets.runtime.replay import replay
from qmri_models.simulation.mrf_raw_writer import write_mrf_raw
from qmri_models.simulation.mrf_scan import MrfScanSettings, simulate_mrf_scan
from tests.chain_variants import variant_text
from tests.conftest import ROUNDING, make_raw, max_difference_of_max, raw_header_and_items

pytestmark = [
    pytest.mark.slow,
    # gadgetron-python reads header arrays through numpy from ctypes structures, which numpy warns about
    pytest.mark.filterwarnings("ignore:A builtin ctypes object gave a PEP3118 format string:RuntimeWarning"),
]

_READERS = {
    constants.GADGET_MESSAGE_ISMRMRD_IMAGE: read_image,
    constants.GADGET_MESSAGE_IMAGE_ARRAY: read_image_array,
    constants.GADGET_MESSAGE_RECON_DATA: read_recon_data,
}


def run_as_gadgetron(configuration: str, header: Any, items: Iterable[Any], cwd: Path, target: str = "chain") -> list:
    """Start ``gadgets.external`` as Gadgetron does, feed it, and return everything it sent back."""
    with socket.create_server(("localhost", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(120)
        log = (cwd / "external.log").open("w")
        external = subprocess.Popen(
            [sys.executable, "-m", "gadgetron", str(port), "gadgets.external", target], cwd=cwd, stderr=log
        )
        try:
            connection, _ = server.accept()
        except TimeoutError:
            external.kill()
            raise
    with connection:
        stream = Connection.SocketWrapper(connection)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                stream.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CONFIG))
                write_byte_string(stream, configuration.encode())
                stream.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_HEADER))
                write_byte_string(stream, header.toXML().encode())
                for item in items:
                    if isinstance(item, ReconData):
                        write_recon_data(stream, item)
                    elif isinstance(item, ImageArray):
                        write_image_array(stream, item)
                    elif isinstance(item, ismrmrd.Acquisition):
                        write_acquisition(stream, item)
                stream.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CLOSE))
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        received = []
        while True:
            mid = read(stream, constants.GadgetMessageIdentifier)
            if mid == constants.GADGET_MESSAGE_CLOSE:
                break
            received.append(_READERS[mid](stream))
        sender.join()
    external.wait(timeout=60)
    log.close()
    assert external.returncode == 0, (cwd / "external.log").read_text()[-3000:]
    assert not errors
    return received


def maps_by_series(images: Iterable[Any]) -> dict[int, list[np.ndarray]]:
    found: dict[int, list[np.ndarray]] = {}
    for image in images:
        if isinstance(image, ismrmrd.Image):
            found.setdefault(image.image_series_index, []).append(np.array(image.data[0, 0]))
    return found


def replayed_maps(raw: Path, chain_text: str, out: Path) -> dict[int, list[np.ndarray]]:
    """Return every image series ``qmri replay`` writes for the raw file through the chain."""
    replay(raw, parse_chain(chain_text, site=True), out, progress=False)
    images = out / "images.h5"
    return {series: list(read_series(images, series)[0]) for series in sorted(series_in(images))}


def assert_same_series(
    got: dict[int, list[np.ndarray]], expected: dict[int, list[np.ndarray]], *, rounding: float = 0.0
) -> None:
    """Assert the same series, images and shapes, every value equal (within ``rounding`` of the series' maximum)."""
    assert 11 in expected  # the chain's map series
    assert sorted(got) == sorted(expected)
    for series, maps in expected.items():
        assert len(got[series]) == len(maps), series
        for a, b in zip(got[series], maps, strict=True):
            difference = max_difference_of_max(a, b)
            assert difference <= rounding, (series, difference)
    assert np.count_nonzero(expected[11][0]) > 100  # maps with content, not empty images


def shipped(name: str) -> str:
    return Path(resolve_chain(name).source).read_text()


def without_gadget(chain_text: str, classname: str) -> str:
    """Return a chain's XML without its gadget of class ``classname`` (Gadgetron runs its own in its place)."""
    root = fromstring(chain_text)
    stream = root.find("stream")
    assert stream is not None
    (node,) = [g for g in stream.findall("gadget") if g.findtext("classname") == classname]
    stream.remove(node)
    return tostring(root, encoding="unicode")


def as_external(chain_text: str) -> str:
    """Return a chain's <stream> as an external's configuration (what chains/gadgetron/ files hold)."""
    start, end = chain_text.index("<stream>"), chain_text.index("</stream>") + len("</stream>")
    return f"<configuration>{chain_text[start:end]}</configuration>"


@pytest.mark.parametrize(("chain", "contrast"), [("t1_molli", "molli"), ("t2prep", "t2prep")])
def test_a_shipped_chain_by_name_inside_gadgetron_equals_replay(chain: str, contrast: str, tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw.h5", contrast=contrast, acceleration=2, acs_fraction=0.2, n_slices=2, matrix=48)
    header, items = raw_header_and_items(raw)
    configuration = f'<configuration><property name="chain" value="{chain}"/></configuration>'
    received = run_as_gadgetron(configuration, header, items, tmp_path)
    assert_same_series(maps_by_series(received), replayed_maps(raw, shipped(chain), tmp_path / "replay"))
    assert list((tmp_path / "dicom").rglob("*.dcm"))  # the chain's DICOM gadget wrote into the external's folder


def test_puq_chain_as_a_stream_inside_gadgetron_equals_replay(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw.h5", contrast="molli", acceleration=4, acs_fraction=0.16, matrix=64, n_coils=8)
    header, items = raw_header_and_items(raw)
    text = variant_text("t1_molli_puq", "Recon", mc_samples=3)
    received = run_as_gadgetron(as_external(text), header, items, tmp_path)
    assert_same_series(maps_by_series(received), replayed_maps(raw, text, tmp_path / "replay"), rounding=ROUNDING)


def test_mrf_chain_inside_gadgetron_equals_replay(tmp_path: Path) -> None:
    settings = MrfScanSettings(matrix=32, n_coils=2, n_frames_full=50, truncation=5, n_interleaves=8, seed=1)
    raw = tmp_path / "mrf.h5"
    write_mrf_raw(raw, settings, simulate_mrf_scan(settings))
    header, items = raw_header_and_items(raw)
    received = run_as_gadgetron(
        '<configuration><property name="chain" value="mrf_fisp"/></configuration>', header, items, tmp_path
    )
    assert_same_series(maps_by_series(received), replayed_maps(raw, shipped("mrf_fisp"), tmp_path / "replay"))


def bucket_to_buffer(items: list[Any], header: Any, n_dimension: str = "set") -> list[ReconData]:
    """Return one ReconData per slice as Gadgetron's BucketToBufferGadget makes it (independently of our code).

    Data `(RO, E1, E2, CHA, N, S, LOC)` with every readout at its E1 and its N (the ``n_dimension`` counter), zero
    headers where nothing was acquired, the calibration lines in a compact reference buffer (E1 only as long as the
    calibration region, each readout's header saying its real line), the sampling description filled in.
    """
    readouts = [
        a for a in items if isinstance(a, ismrmrd.Acquisition) and not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    ]
    encoding = header.encoding[0]
    n_e1 = encoding.encodedSpace.matrixSize.y
    n_n = max(getattr(a.idx, n_dimension) for a in readouts) + 1
    calibration_flags = (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    buffers = []
    for slice_index in sorted({a.idx.slice for a in readouts}):
        of_slice = [a for a in readouts if a.idx.slice == slice_index]
        n_cha, n_ro = of_slice[0].data.shape
        data = np.zeros((n_ro, n_e1, 1, n_cha, n_n, 1, 1), np.complex64, order="F")
        headers = np.empty((n_e1, 1, n_n, 1, 1), dtype=object)
        headers.fill(None)
        calib = [a for a in of_slice if any(a.is_flag_set(flag) for flag in calibration_flags)]
        calib_lines = sorted({a.idx.kspace_encode_step_1 for a in calib})
        ref_data = np.zeros((n_ro, len(calib_lines), 1, n_cha, n_n, 1, 1), np.complex64, order="F")
        ref_headers = np.empty((len(calib_lines), 1, n_n, 1, 1), dtype=object)
        for a in of_slice:
            e1, n = a.idx.kspace_encode_step_1, getattr(a.idx, n_dimension)
            if not a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):  # separate calibration: reference only
                data[:, e1, 0, :, n, 0, 0] = a.data.T
                headers[e1, 0, n, 0, 0] = a.getHead()
            if a in calib:
                row = calib_lines.index(e1)
                ref_data[:, row, 0, :, n, 0, 0] = a.data.T
                ref_headers[row, 0, n, 0, 0] = a.getHead()
        for array in (headers, ref_headers):
            for index in np.ndindex(array.shape):
                if array[index] is None:
                    array[index] = ismrmrd.AcquisitionHeader()
        buffers.append(
            ReconData(
                [
                    ReconBit(
                        ReconBuffer(data, None, None, headers, _sampling(header)),
                        ReconBuffer(ref_data, None, None, ref_headers, _sampling(header)) if calib_lines else None,
                    )
                ]
            )
        )
    return buffers


def _sampling(header: Any) -> SamplingDescription:
    encoding = header.encoding[0]
    sampling = SamplingDescription()
    for target, space in ((sampling.encoded_FOV, encoding.encodedSpace), (sampling.recon_FOV, encoding.reconSpace)):
        target[:] = (space.fieldOfView_mm.x, space.fieldOfView_mm.y, space.fieldOfView_mm.z)
    sampling.encoded_matrix[:] = (encoding.encodedSpace.matrixSize.x, encoding.encodedSpace.matrixSize.y, 1)
    sampling.recon_matrix[:] = (encoding.reconSpace.matrixSize.x, encoding.reconSpace.matrixSize.y, 1)
    return sampling


def noise_adjusted(header: Any, items: list[Any]) -> list[Any]:
    """Return the readouts after noise prewhitening, as Gadgetron's NoiseAdjustGadget sends them on."""
    chain = parse_chain(
        "<configuration><version>2</version><stream><gadget><classname>NoiseAdjustGadget</classname></gadget>"
        "</stream></configuration>"
    )
    out: list[Any] = []
    run_chain(chain, header, items, out.append)
    return out


def test_recon_data_from_bucket_to_buffer_feeds_our_recon_and_fit(tmp_path: Path) -> None:
    # Gadgetron's NoiseAdjust, AcquisitionAccumulateTrigger and BucketToBuffer, then our chain without its own
    # noise gadget: the maps are the whole chain's
    raw = make_raw(tmp_path / "raw.h5", contrast="molli", acceleration=2, acs_fraction=0.2, n_slices=2, matrix=48)
    header, items = raw_header_and_items(raw)
    recon_data = bucket_to_buffer(noise_adjusted(header, items), header)
    assert len(recon_data) == 2
    text = shipped("t1_molli")
    received = run_as_gadgetron(as_external(without_gadget(text, "NoiseAdjustGadget")), header, recon_data, tmp_path)
    assert_same_series(maps_by_series(received), replayed_maps(raw, text, tmp_path / "replay"))


def test_a_single_gadget_target_round_trips_recon_data(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw.h5", contrast="molli", acceleration=2, acs_fraction=0.25, n_slices=1, matrix=32)
    header, items = raw_header_and_items(raw)
    (sent,) = bucket_to_buffer(items, header)
    (back,) = run_as_gadgetron("<configuration/>", header, [sent], tmp_path, target="AcquisitionBufferGadget")
    assert isinstance(back, ReconData)
    data, back_data = sent.bits[0].data, back.bits[0].data
    assert np.array_equal(back_data.data, data.data)
    sampled = [(i, h.scan_counter) for i, h in enumerate(data.headers.flat) if h.number_of_samples]
    assert sampled == [(i, h.scan_counter) for i, h in enumerate(back_data.headers.flat) if h.number_of_samples]
    # the compact reference buffer comes back at full size, its lines where their headers say
    ref, back_ref = sent.bits[0].ref, back.bits[0].ref
    lines = sorted({h.idx.kspace_encode_step_1 for h in ref.headers.flat if h.number_of_samples})
    assert np.array_equal(back_ref.data[:, lines], ref.data)


def test_phase_images_leave_as_an_image_array(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw.h5", contrast="molli", acceleration=1, n_slices=1, matrix=32)
    header, items = raw_header_and_items(raw)
    recon_data = bucket_to_buffer(items, header)
    configuration = (
        "<configuration><stream><gadget><classname>AcquisitionBufferGadget</classname></gadget><gadget>"
        '<classname>CartesianReconGadget</classname><property name="method" value="zero_filled"/>'
        '<property name="coil_combine" value="sos"/></gadget></stream></configuration>'
    )
    (array,) = run_as_gadgetron(configuration, header, recon_data, tmp_path)
    assert array.data.shape == (32, 32, 1, 1, 8, 1, 1)
    # sum of squares of the inverse FFT of fully sampled k-space: an independent reference from the raw readouts
    kspace = recon_data[0].bits[0].data.data[:, :, 0, :, :, 0, 0]  # (RO, E1, CHA, N)
    coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(0, 1)), axes=(0, 1)), axes=(0, 1))
    expected = np.sqrt((np.abs(coil_images) ** 2).sum(axis=2))
    start = (kspace.shape[0] - 32) // 2
    got = np.abs(array.data[:, :, 0, 0, :, 0, 0])
    scale = got.max() / expected[start : start + 32].max()  # FFT normalisations differ by a constant
    np.testing.assert_allclose(got, scale * expected[start : start + 32], rtol=1e-3, atol=1e-3 * got.max())
    assert [h.set for h in array.headers.flat] == list(range(8))
    assert "PrepTime_ms" in array.meta[0]


def test_an_image_array_from_a_gadgetron_recon_feeds_our_fit(tmp_path: Path) -> None:
    # as Gadgetron's own GRAPPA/SENSE would send them: an ImageArray per slice, no meta of ours, no readout headers;
    # the fit finds the inversion times in the protocol and fits what it fits in one process
    raw = make_raw(tmp_path / "raw.h5", contrast="molli", acceleration=2, acs_fraction=0.2, n_slices=2, matrix=48)
    header, items = raw_header_and_items(raw)
    builder = SliceBufferBuilder(header, AcquisitionBufferConfig())
    buffers = [b for a in noise_adjusted(header, items) for b in builder.add(a)] + builder.flush()
    phases = [reconstruct_slice(b, CartesianReconConfig()) for b in buffers]
    arrays = []
    for item in phases:
        array = phase_images_to_image_array(item)
        array.meta, array.acq_headers = [""] * len(array.meta), None
        arrays.append(array)
    configuration = (
        "<configuration><stream><gadget><classname>ParameterFitGadget</classname></gadget>"
        "<gadget><classname>MapSeriesGadget</classname></gadget></stream></configuration>"
    )
    received = maps_by_series(run_as_gadgetron(configuration, header, arrays, tmp_path))
    expected = [map_images_to_mrd(fit_slice(item, ParameterFitConfig()), MapSeriesConfig()) for item in phases]
    for index, series in enumerate((11, 12)):
        assert len(received[series]) == 2
        for got, images in zip(received[series], expected, strict=True):
            assert np.array_equal(got, images[index].data[0, 0])
