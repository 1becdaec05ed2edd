"""Score a replay's output against the simulator's truth stored in the raw file."""

from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from qmri_models.metrics import nrmse
from qmri_models.simulation.raw_writer import TRUTH_GROUP


@dataclass(frozen=True)
class PhaseScore:
    """NRMSE of one slice's phase image against the noise-free truth, inside the tissue mask."""

    slice: int
    phase: int
    prep_time_ms: float
    nrmse: float


def read_series(images_file: Path, series: int, *, group: str = "dataset") -> tuple[np.ndarray, list[ismrmrd.Image]]:
    """Return the pixel data of one series of an MRD images file and its images.

    Parameters
    ----------
    images_file : File written by ``qmri replay``.
    series : ``image_series_index`` to read.
    group : Dataset group.

    Returns
    -------
    ``(data, images)``: data shape `(images, y, x)` in file order, and the images with headers and meta.
    """
    with ismrmrd.Dataset(str(images_file), group, create_if_needed=False) as dataset:
        name = f"image_{series}"
        if name not in dataset.list():
            raise ValueError(f"{images_file}: no series {series} (has {', '.join(sorted(dataset.list()))})")
        images = [dataset.read_image(name, i) for i in range(dataset.number_of_images(name))]
    return np.stack([im.data[0, 0] for im in images]), images


def score_phase_images(out_dir: Path, raw: Path, *, series: int = 1) -> list[PhaseScore]:
    """Return the NRMSE of every phase image of a replay against the raw file's truth.

    Parameters
    ----------
    out_dir : Replay output directory (holding images.h5).
    raw : The simulated raw file (holding /truth).
    series : Series of the per-phase images.

    Returns
    -------
    One score per slice and phase.
    """
    data, images = read_series(Path(out_dir) / "images.h5", series)
    with h5py.File(raw, "r") as f:
        if TRUTH_GROUP not in f:
            raise ValueError(f"{raw}: no /{TRUTH_GROUP} group; only simulated raw files can be scored")
        truth = np.abs(f[TRUTH_GROUP]["images"][:])
        labels = f[TRUTH_GROUP]["labels"][:]
        prep = f[TRUTH_GROUP]["prep_times_ms"][:]
    scores = []
    for pixels, image in zip(data, images, strict=True):
        s, p = int(image.slice), int(image.set)
        scores.append(PhaseScore(s, p, float(prep[p]), nrmse(pixels, truth[s, p], labels[s] > 0)))
    return scores
