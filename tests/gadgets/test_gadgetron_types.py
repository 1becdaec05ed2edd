"""Our items through Gadgetron's types and gadgetron-python's own serialisation, and back."""

import io
from typing import Any

import ismrmrd
import numpy as np
import pytest
from gadgetron.external import constants
from gadgetron.external.readers import read
from gadgetron.types.image_array import read_image_array, write_image_array
from gadgetron.types.recon_data import read_recon_data, write_recon_data

from gadgets.buffering import AcquisitionBufferConfig, SliceBufferBuilder, phase_prep_times_ms
from gadgets.gadgetron_types import (
    image_array_to_phase_images,
    phase_images_to_image_array,
    recon_data_to_slice_buffers,
    slice_buffer_to_recon_data,
)
from gadgets.items import PhaseImages, SliceBuffer
from gadgets.recon import CartesianReconConfig, reconstruct_slice
from tests.conftest import make_raw, raw_header_and_items

pytestmark = pytest.mark.filterwarnings("ignore:A builtin ctypes object gave a PEP3118 format string:RuntimeWarning")


@pytest.fixture(scope="module")
def buffers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[SliceBuffer]]:
    raw = make_raw(tmp_path_factory.mktemp("raw") / "molli.h5", contrast="molli", acceleration=3, n_slices=2, matrix=32)
    header, items = raw_header_and_items(raw)
    builder = SliceBufferBuilder(header, AcquisitionBufferConfig())
    done = [b for item in items if isinstance(item, ismrmrd.Acquisition) for b in builder.add(item)]
    return header, done + builder.flush()


def through_the_wire(item: Any, write: Any, read_item: Any) -> Any:
    """Return ``item`` after gadgetron-python wrote it to bytes and read it back, as between two processes."""
    wire = io.BytesIO()
    write(wire, item)
    wire.seek(0)
    read(wire, constants.GadgetMessageIdentifier)
    return read_item(wire)


def prep_times(header: Any, references: list[Any]) -> np.ndarray:
    return phase_prep_times_ms(header, references, AcquisitionBufferConfig())


def test_a_slice_buffer_round_trips_through_recon_data(buffers: tuple[Any, list[SliceBuffer]]) -> None:
    header, slices = buffers
    for buffer in slices:
        recon_data = through_the_wire(slice_buffer_to_recon_data(buffer, header), write_recon_data, read_recon_data)
        data = recon_data.bits[0].data
        n_phases, n_coils, n_y, n_x = buffer.kdata.shape
        assert data.data.shape == (n_x, n_y, 1, n_coils, n_phases, 1, 1)  # (RO, E1, E2, CHA, N, S, LOC)
        (back,) = recon_data_to_slice_buffers(recon_data, header, prep_times)
        assert np.array_equal(back.kdata, buffer.kdata)
        assert np.array_equal(back.sampled, buffer.sampled)
        assert np.array_equal(back.calibration_lines, buffer.calibration_lines)
        assert np.array_equal(back.prep_times_ms, buffer.prep_times_ms)
        assert (back.slice, back.recon_matrix, back.field_of_view_mm) == (
            buffer.slice,
            buffer.recon_matrix,
            buffer.field_of_view_mm,
        )
        assert [r.scan_counter for r in back.references] == [r.scan_counter for r in buffer.references]


def test_recon_data_lines_sit_at_their_headers_lines(buffers: tuple[Any, list[SliceBuffer]]) -> None:
    header, (buffer, _) = buffers
    recon_data = slice_buffer_to_recon_data(buffer, header)
    heads = recon_data.bits[0].data.headers
    for line in range(heads.shape[0]):
        for phase in range(heads.shape[2]):
            head = heads[line, 0, phase, 0, 0]
            assert (head.number_of_samples > 0) == buffer.sampled[phase, line]
            if head.number_of_samples:
                assert head.idx.kspace_encode_step_1 == line
                assert head.idx.set == phase


def test_phase_images_round_trip_through_an_image_array(buffers: tuple[Any, list[SliceBuffer]]) -> None:
    header, (buffer, _) = buffers
    item = reconstruct_slice(buffer, CartesianReconConfig())
    array = through_the_wire(phase_images_to_image_array(item), write_image_array, read_image_array)
    assert array.data.shape == (32, 32, 1, 1, 8, 1, 1)

    def never(*_: Any) -> np.ndarray:
        raise AssertionError("the prep times are in the meta")

    (back,) = image_array_to_phase_images(array, header, never)
    assert isinstance(back, PhaseImages)
    assert np.array_equal(back.images, item.images)
    assert np.array_equal(back.prep_times_ms, item.prep_times_ms)
    assert back.slice == item.slice
    assert back.sd is None
    assert back.samples is None


def test_an_image_array_without_our_meta_takes_prep_times_from_the_protocol(
    buffers: tuple[Any, list[SliceBuffer]],
) -> None:
    header, (buffer, _) = buffers
    array = phase_images_to_image_array(reconstruct_slice(buffer, CartesianReconConfig()))
    array.meta, array.acq_headers = [""] * 8, None
    (back,) = image_array_to_phase_images(array, header, prep_times)
    assert np.array_equal(back.prep_times_ms, np.asarray(header.sequenceParameters.TI[:8], dtype=float))


def test_sum_of_squares_magnitude_images_cross_as_complex64(buffers: tuple[Any, list[SliceBuffer]]) -> None:
    # gadgetron-python 1.4 writes arrays with np.array(..., copy=False), which numpy 2 refuses when a dtype
    # conversion is needed: float32 magnitude images must be converted before they reach its writer
    _, (buffer, _) = buffers
    item = reconstruct_slice(buffer, CartesianReconConfig(method="zero_filled", coil_combine="sos"))
    assert item.images.dtype == np.float32
    array = through_the_wire(phase_images_to_image_array(item), write_image_array, read_image_array)
    np.testing.assert_array_equal(array.data[:, :, 0, 0, :, 0, 0].real.transpose(2, 1, 0), item.images)


def test_3d_recon_data_is_refused_naming_its_shape(buffers: tuple[Any, list[SliceBuffer]]) -> None:
    header, (buffer, _) = buffers
    recon_data = slice_buffer_to_recon_data(buffer, header)
    data = recon_data.bits[0].data
    data.data = np.concatenate([data.data, data.data], axis=2)
    with pytest.raises(ValueError, match=r"only 2D Cartesian \(E2 = 1\) buffers"):
        recon_data_to_slice_buffers(recon_data, header, prep_times)
