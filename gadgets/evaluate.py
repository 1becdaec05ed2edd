"""Score a replay's output against the simulator's truth stored in the raw file."""

from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from gadgets.image_meta import meaning_of
from qmri_models.metrics import TissueScore, nrmse, score_map_per_tissue
from qmri_models.simulation.raw_writer import TRUTH_GROUP
from qmri_models.structures.geometry import SliceGeometry
from qmri_models.structures.rois import rois_from_labels
from qmri_models.structures.statistics import structure_statistics


@dataclass(frozen=True)
class PhaseScore:
    """NRMSE of one slice's phase image against the noise-free truth, inside the tissue mask."""

    slice: int
    phase: int
    prep_time_ms: float
    nrmse: float


def series_in(images_file: Path, *, group: str = "dataset") -> set[int]:
    """Return the ``image_series_index`` of every series an MRD images file holds."""
    with ismrmrd.Dataset(str(images_file), group, create_if_needed=False) as dataset:
        return {int(name.removeprefix("image_")) for name in dataset.list() if name.startswith("image_")}


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


def map_series_in(images_file: Path, *, group: str = "dataset") -> list[int]:
    """Return the series of an MRD images file whose images are maps with a truth (``TRUTH_MAPS``), in order."""
    with ismrmrd.Dataset(str(images_file), group, create_if_needed=False) as dataset:
        found = [
            int(name.removeprefix("image_"))
            for name in dataset.list()
            if name.startswith("image_")
            and dataset.number_of_images(name)
            and meaning_of(dataset.read_image(name, 0)).role in TRUTH_MAPS
        ]
    return sorted(found)


def read_truth(raw: Path, *names: str) -> tuple[list[np.ndarray], list[str]]:
    """Return the named datasets of a simulated raw file's ``/truth`` group, in the order asked, and its tissue names.

    Raises
    ------
    ValueError
        If the file has no truth (it was not made by the simulator).
    """
    with h5py.File(raw, "r") as f:
        if TRUTH_GROUP not in f:
            raise ValueError(f"{raw}: no /{TRUTH_GROUP} group; only simulated raw files can be scored")
        truth = f[TRUTH_GROUP]
        return [truth[name][:] for name in names], [str(n) for n in truth.attrs["label_names"]]


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
    (truth_images, labels, prep), _ = read_truth(raw, "images", "labels", "prep_times_ms")
    truth = np.abs(truth_images)
    scores = []
    for pixels, image in zip(data, images, strict=True):
        s, p = int(image.slice), int(image.set)
        scores.append(PhaseScore(s, p, float(prep[p]), nrmse(pixels, truth[s, p], labels[s] > 0)))
    return scores


TRUTH_MAPS = {"T1": "t1_ms", "T2": "t2_ms"}
"""The truth dataset of each map's role (``gadgets.image_meta``)."""


@dataclass(frozen=True)
class MapScores:
    """Scores of one slice's map against the truth, per tissue class."""

    slice: int
    map_name: str
    tissues: list[TissueScore]


def score_maps(out_dir: Path, raw: Path, *, series: int = 11) -> list[MapScores]:
    """Return per-tissue MAPE, NRMSE and SSIM of every slice's map in a replay against the raw file's truth.

    Parameters
    ----------
    out_dir : Replay output directory (holding images.h5).
    raw : The simulated raw file (holding /truth).
    series : Series of the maps (its images' role says T1 or T2).

    Returns
    -------
    One entry per slice.
    """
    return [
        MapScores(m.slice, m.role, score_map_per_tissue(m.values, m.truth, m.labels, m.names))
        for m in _maps_with_truth(out_dir, raw, series)
    ]


@dataclass(frozen=True)
class _MapWithTruth:
    """One slice's map from a replay beside the raw file's truth for it."""

    slice: int
    role: str
    values: np.ndarray
    """The map. Shape `(y, x)`."""
    truth: np.ndarray
    """The true map of the same quantity. Shape `(y, x)`."""
    labels: np.ndarray
    """The truth's tissue labels. Shape `(y, x)` int."""
    names: list[str]
    """Tissue name of every label value."""
    image: ismrmrd.Image


def _maps_with_truth(out_dir: Path, raw: Path, series: int) -> list[_MapWithTruth]:
    """Return every slice's map of a replay's series with its truth, refusing a series that is no T1 or T2 map."""
    data, images = read_series(Path(out_dir) / "images.h5", series)
    (labels, *maps), names = read_truth(raw, "labels", *TRUTH_MAPS.values())
    truths = dict(zip(TRUTH_MAPS, maps, strict=True))
    found = []
    for values, image in zip(data, images, strict=True):
        role = meaning_of(image).role
        if role not in truths:
            raise ValueError(f"series {series} holds {role!r} images; only {', '.join(TRUTH_MAPS)} maps can be scored")
        s = int(image.slice)
        found.append(_MapWithTruth(s, role, values, truths[role][s], labels[s], names, image))
    return found


@dataclass(frozen=True)
class StructureScore:
    """A map's mean in one structure (a tissue class of the truth) beside the truth's mean over the same pixels."""

    structure: str
    pixels: int
    """Pixels of the structure where the map has a value (fitted, kept: positive and finite)."""
    volume_ml: float
    """Volume of those pixels in ml."""
    map_mean_ms: float
    truth_mean_ms: float

    @property
    def relative_error(self) -> float:
        """``(map mean - truth mean) / truth mean``."""
        return (self.map_mean_ms - self.truth_mean_ms) / self.truth_mean_ms


@dataclass(frozen=True)
class MapStructureScores:
    """The structure scores of one slice's map."""

    slice: int
    map_name: str
    structures: list[StructureScore]


def score_structures(out_dir: Path, raw: Path, *, series: int = 11) -> list[MapStructureScores]:
    """Return each slice's map mean per tissue class of the truth, beside the truth's mean, for a replay.

    The structures are the truth's tissue classes (``/truth/labels``) restricted to the pixels where the map has a
    value (positive and finite; zero marks pixels not fitted or rejected); both means run over those pixels, so the
    error is the map's, not the mask's. The volume comes from the image's field of view and matrix.

    Parameters
    ----------
    out_dir : Replay output directory (holding images.h5).
    raw : The simulated raw file (holding /truth).
    series : Series of the maps (its images' role says T1 or T2).

    Returns
    -------
    One entry per slice; structures in label order, those without a mapped pixel left out.
    """
    scores = []
    for m in _maps_with_truth(out_dir, raw, series):
        mapped = np.isfinite(m.values) & (m.values > 0)
        rois = rois_from_labels(np.where(mapped, m.labels, 0), dict(enumerate(m.names[1:], start=1)))
        fov_x, fov_y, fov_z = (float(f) for f in m.image.field_of_view)
        n_y, n_x = m.values.shape
        geometry = SliceGeometry(fov_mm=(fov_y, fov_x), matrix=(n_y, n_x), slice_thickness_mm=fov_z)
        measured = structure_statistics(np.where(mapped, m.values, 0.0), rois, geometry, quantity=m.role)
        true = structure_statistics(m.truth, rois, geometry, quantity=m.role)
        structures = [
            StructureScore(mine.structure, mine.sample_pixels[0], mine.volume_ml, mine.mean_ms, t.mean_ms)
            for mine, t in zip(measured, true, strict=True)
            if mine.mean_ms is not None and t.mean_ms is not None
        ]
        scores.append(MapStructureScores(m.slice, m.role, structures))
    return scores
