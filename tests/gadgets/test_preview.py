"""Previews: an image of a series as an 8-bit PNG in its stored window."""

from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from PIL import Image

from gadgets.cli import main
from gadgets.image_meta import meaning_of
from gadgets.preview import preview, series_image, to_uint8, write_preview
from gadgets.runtime.output_file import OutputFile


def mrd_image(values: np.ndarray, *, series: int, slice_index: int, phase: int = 0, **meta: str) -> ismrmrd.Image:
    image = ismrmrd.Image.from_array(values.astype(np.float32), transpose=False)
    image.image_series_index, image.slice, image.set = series, slice_index, phase
    image.attribute_string = ismrmrd.Meta(meta).serialize()
    return image


@pytest.fixture
def images_file(tmp_path: Path) -> Path:
    """Series 11: a 4x6 ramp 0..2300 per slice (slices 0 and 1, +100 on slice 1) windowed 0-2000; series 1: two
    phases of slice 0 without a window."""
    ramp = np.arange(24.0).reshape(4, 6) * 100.0
    out = OutputFile(tmp_path / "images.h5", "<ismrmrdHeader/>")
    window = {"GADGETRON_WindowCenter": "1000", "GADGETRON_WindowWidth": "2000"}
    out.write(mrd_image(ramp, series=11, slice_index=0, **window))
    out.write(mrd_image(ramp + 100.0, series=11, slice_index=1, **window))
    out.write(mrd_image(ramp, series=1, slice_index=0, phase=0))
    out.write(mrd_image(2.0 * ramp, series=1, slice_index=0, phase=1))
    out.close()
    return out.path


def test_window_maps_linearly_to_gray_levels_and_saturates() -> None:
    values = np.array([[-50.0, 0.0, 500.0, 1000.0], [2000.0, 2500.0, np.nan, np.inf]])
    np.testing.assert_array_equal(to_uint8(values, 1000.0, 2000.0), [[0, 0, 64, 128], [255, 255, 0, 255]])
    with pytest.raises(ValueError, match="window width must be positive, got 0"):
        to_uint8(values, 1000.0, 0.0)


def test_png_is_the_slice_in_its_stored_window(images_file: Path, tmp_path: Path) -> None:
    gray = write_preview(images_file, 11, tmp_path / "sub" / "map.png", slice_index=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "map.png")), gray)
    expected = np.clip(np.rint((np.arange(24.0).reshape(4, 6) * 100.0 + 100.0) / 2000.0 * 255.0), 0, 255)
    np.testing.assert_array_equal(gray, expected)


def test_phase_series_without_a_window_uses_its_percentiles(images_file: Path) -> None:
    image = series_image(images_file, 1, phase=1)
    assert int(image.set) == 1
    assert meaning_of(image).window is None
    gray = preview(image)
    assert gray.min() == 0
    assert gray.max() == 255
    assert np.all(np.diff(gray.ravel().astype(int)) >= 0)  # the ramp stays a ramp


def test_missing_series_or_slice_says_what_there_is(images_file: Path) -> None:
    with pytest.raises(ValueError, match=r"no series 12 \(has image_1, image_11\)"):
        series_image(images_file, 12)
    with pytest.raises(ValueError, match="series 11 has no image of slice 2"):
        series_image(images_file, 11, slice_index=2)
    with pytest.raises(ValueError, match="slice 0, phase 3"):
        series_image(images_file, 1, phase=3)


def test_preview_command_writes_the_png(images_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t1.png"
    assert main(["preview", str(images_file), "--series", "11", "--out", str(out)]) == 0
    assert "series 11, slice 0, 6x4" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (4, 6)
    assert main(["preview", str(images_file), "--series", "5", "--out", str(out)]) == 2


def test_a_window_that_is_not_a_number_is_an_error() -> None:
    image = mrd_image(np.ones((2, 2)), series=11, slice_index=0, GADGETRON_WindowCenter="x", GADGETRON_WindowWidth="1")
    with pytest.raises(ValueError, match="image meta GADGETRON_WindowCenter must be a number; got 'x'"):
        preview(image)
