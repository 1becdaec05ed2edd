"""Previews: one image of a series in an MRD images file as an 8-bit grayscale PNG, in the window stored with it."""

from pathlib import Path

import ismrmrd
import numpy as np
from PIL import Image

from gadgets.image_meta import meaning_of
from gadgets.windowing import percentile_window


def to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Return values mapped through a linear window to 0-255: ``center - width / 2`` is black, ``+ width / 2`` white.

    The mapping is DICOM's ``LINEAR_EXACT`` VOI function; values outside the window saturate, non-finite values
    are black.

    Parameters
    ----------
    values : Pixel values, in the window's unit. Shape `(y, x)`.
    center : Window centre.
    width : Window width, > 0.

    Returns
    -------
    Gray levels. Shape `(y, x)` uint8.

    Raises
    ------
    ValueError
        If ``width`` is not positive.
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    scaled = (np.asarray(values, dtype=np.float64) - (center - width / 2)) / width * 255.0
    return np.rint(np.clip(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0), 0.0, 255.0)).astype(np.uint8)


def series_image(
    images_file: Path, series: int, *, slice_index: int = 0, phase: int | None = None, group: str = "dataset"
) -> ismrmrd.Image:
    """Return one image of a series: the first of the slice in file order, or the one of the given phase.

    Parameters
    ----------
    images_file : MRD images file (``images.h5`` as ``qmri replay`` writes it).
    series : ``image_series_index`` (11: the map; 12: its SD; 1: phase images).
    slice_index : The image's slice.
    phase : The image's phase (its ``set``), for series of phase images; None for the first of the slice.
    group : Dataset group.

    Returns
    -------
    The image, with its header and meta.

    Raises
    ------
    ValueError
        If the file has no such series, or the series no image of that slice (and phase).
    """
    with ismrmrd.Dataset(str(images_file), group, create_if_needed=False) as dataset:
        name = f"image_{series}"
        if name not in dataset.list():
            series_names = sorted(n for n in dataset.list() if n.startswith("image_"))
            raise ValueError(f"{images_file}: no series {series} (has {', '.join(series_names) or 'none'})")
        for index in range(dataset.number_of_images(name)):
            image = dataset.read_image(name, index)
            if int(image.slice) == slice_index and (phase is None or int(image.set) == phase):
                return image
    which = f"slice {slice_index}" + ("" if phase is None else f", phase {phase}")
    raise ValueError(f"{images_file}: series {series} has no image of {which}")


def preview(image: ismrmrd.Image) -> np.ndarray:
    """Return an image as 8-bit gray levels in its stored window (else its 1st-99th percentile).

    Parameters
    ----------
    image : An MRD image of one channel and one plane (magnitude or float values).

    Returns
    -------
    Gray levels, rows along y. Shape `(y, x)` uint8.

    Raises
    ------
    ValueError
        If the stored window is not a pair of numbers.
    """
    values = np.abs(image.data[0, 0]) if np.iscomplexobj(image.data) else image.data[0, 0]
    center, width = meaning_of(image).window or percentile_window(values)
    return to_uint8(values, center, width)


def write_preview(
    images_file: Path, series: int, out: Path, *, slice_index: int = 0, phase: int | None = None
) -> np.ndarray:
    """Write one image of a series as an 8-bit grayscale PNG in its stored window; return the gray levels.

    Parameters
    ----------
    images_file : MRD images file (``images.h5`` as ``qmri replay`` writes it).
    series : ``image_series_index``.
    out : PNG file to write (its folder is made).
    slice_index : The image's slice.
    phase : The image's phase, for series of phase images; None for the first of the slice.

    Returns
    -------
    The gray levels written. Shape `(y, x)` uint8.
    """
    gray = preview(series_image(images_file, series, slice_index=slice_index, phase=phase))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray).save(out, format="PNG")
    return gray
