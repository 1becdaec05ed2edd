"""Per-structure numbers with the maps: tissue classes of each slice's maps, and what a radiologist reads per class.

For every slice, StructureReportGadget classifies the maps into tissue classes inside the fit's kept pixels
(``qmri_models.structures.classify_tissues``: a Gaussian mixture on log T1, or on log T1 and log T2 when the slice has
both maps) and measures every class (``qmri_models.structures.structure_statistics``). The numbers go to the client
as one JSON TEXT message per measured map, after the slice's maps; DicomOutputGadget writes each as a DICOM
Structured Report that references the map (``gadgets.dicom.structured_report``).

JSON schema (version 1)
-----------------------
::

    {"type": "qmri.structure_report", "version": 1,
     "slice": 0,                        slice index of the maps
     "quantity": "T1", "units": "ms",   the map measured and its unit
     "model": "molli",                  the signal model fitted
     "classified_on": ["T1"],           the maps the classes come from (["T1", "T2"] with both)
     "sd_method": "...",                how the voxel SD map was made (fit residual, MC samples ...)
     "voxel_ml": 0.0354,                volume of one voxel: field of view / matrix times slice thickness
     "n_samples": 100,                  maps of the reconstruction's samples measured (MC dropout); null without
     "structures": [
       {"name": "white_matter",         a class of the classification (``outlier``: pixels no class explains)
        "pixels": 812, "volume_ml": 28.7,
        "mean": 905.2, "median": 901.7, mean and median of the map inside the structure, in ``units``
        "mean_voxel_sd": 31.4,          mean of the voxel SD map inside it, in ``units``
        "mean_sd": 6.2,                 SD (ddof 0) over the samples of the structure's mean, in ``units``
        "mean_cv": 0.0069},             that SD over the mean of the samples' structure means
       ...]}

Numbers that are undefined (an empty class, a map without an SD map, maps without samples) are ``null``, never NaN.
The samples are the maps the PUQ fit makes of every MC sample (``SliceMaps.samples``; the classical fit has none),
measured in the same structures as the map: ``mean_sd`` says how far off the structure's mean may be, which the mean
voxel SD does not (seed paper 002). ``n_samples``, ``mean_sd`` and ``mean_cv`` were added to version 1 without
changing any other field's meaning; ``StructureReport.from_json`` reads reports without them as null.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from gadgets.items import MapImages
from gadgets.runtime.config import GadgetConfig, PropertyError, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.structures.classify import HEAD_CLASSES, OUTLIER_NAME, OUTSIDE_NAME, classify_tissues
from qmri_models.structures.geometry import SliceGeometry
from qmri_models.structures.rois import rois_from_labels
from qmri_models.structures.statistics import structure_statistics

log = logging.getLogger(__name__)

REPORT_TYPE = "qmri.structure_report"
"""The ``type`` of the report's JSON."""
REPORT_VERSION = 1
"""The ``version`` of the report's JSON schema (module docstring)."""


@dataclass(frozen=True)
class StructureValues:
    """What is measured in one structure of one map; values in the report's unit, None where undefined."""

    name: str
    pixels: int
    volume_ml: float
    mean: float | None
    median: float | None
    mean_voxel_sd: float | None
    mean_sd: float | None = None
    mean_cv: float | None = None


@dataclass(frozen=True)
class StructureReport:
    """The structures of one slice measured on one map: the JSON message's content."""

    slice: int
    quantity: str
    units: str
    model: str
    classified_on: tuple[str, ...]
    sd_method: str
    voxel_ml: float
    structures: tuple[StructureValues, ...]
    n_samples: int | None = None

    def to_json(self) -> str:
        """Return the report as the JSON text of the schema in the module docstring."""
        body = {
            "type": REPORT_TYPE,
            "version": REPORT_VERSION,
            "slice": self.slice,
            "quantity": self.quantity,
            "units": self.units,
            "model": self.model,
            "classified_on": list(self.classified_on),
            "sd_method": self.sd_method,
            "voxel_ml": self.voxel_ml,
            "n_samples": self.n_samples,
            "structures": [vars(s) for s in self.structures],
        }
        return json.dumps(body, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "StructureReport":
        """Return the report of a JSON text written by ``to_json``.

        Raises
        ------
        ValueError
            If the text is not a structure report of this schema version.
        """
        body = json.loads(text)
        if not isinstance(body, dict) or body.get("type") != REPORT_TYPE or body.get("version") != REPORT_VERSION:
            raise ValueError(f"not a {REPORT_TYPE} version {REPORT_VERSION}: {text[:120]!r}")
        try:
            structures = tuple(StructureValues(**s) for s in body["structures"])
            return cls(
                slice=int(body["slice"]),
                quantity=str(body["quantity"]),
                units=str(body["units"]),
                model=str(body["model"]),
                classified_on=tuple(body["classified_on"]),
                sd_method=str(body["sd_method"]),
                voxel_ml=float(body["voxel_ml"]),
                structures=structures,
                n_samples=None if body.get("n_samples") is None else int(body["n_samples"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{REPORT_TYPE} lacks or mistypes a field ({exc}): {text[:120]!r}") from exc


def is_structure_report(item: Any) -> bool:
    """Return whether a stream item is the JSON text of a structure report (any version)."""
    if not isinstance(item, str) or not item.startswith("{"):
        return False
    try:
        body = json.loads(item)
    except json.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("type") == REPORT_TYPE


MAX_CLASSES = 8
"""Most tissue classes a chain may ask for: each is a Gaussian mixture component fitted on every slice."""


@dataclass(frozen=True)
class StructureReportConfig(GadgetConfig):
    """Properties of StructureReportGadget."""

    classes: str = prop(
        ",".join(HEAD_CLASSES),
        "tissue classes in order of increasing T1 (of the primary map without T1), comma-separated",
    )
    send_json: bool = prop(True, "send each report to the client as a JSON TEXT message (false: log it only)")

    def __post_init__(self) -> None:
        names = self.class_names
        if len(names) > MAX_CLASSES:
            raise PropertyError(
                "classes", f"at most {MAX_CLASSES} classes (each is a mixture component), got {len(names)}"
            )
        if not names or len(set(names)) != len(names) or {OUTSIDE_NAME, OUTLIER_NAME} & set(names):
            raise PropertyError(
                "classes",
                f"needs distinct names other than {OUTSIDE_NAME!r} and {OUTLIER_NAME!r}, got {self.classes!r}",
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names, in order."""
        return tuple(name.strip() for name in self.classes.split(",") if name.strip())


@register(
    "StructureReportGadget",
    StructureReportConfig,
    consumes=(MapImages,),
    produces=(MapImages, str),
    sends_under=lambda config: (MapImages, str) if config.send_json else (MapImages,),
)
def structure_report(connection: GadgetConnection) -> None:
    """Classify each slice's maps into tissue classes; send every class's volume, mean, median and spread as JSON."""
    config = StructureReportConfig.from_connection(connection)
    connection.filter(MapImages)
    for item in connection:
        reports = slice_reports(item, config.class_names)
        connection.send(item)  # first, so DicomOutputGadget has written the map its report references
        for report in reports:
            text = report.to_json()
            if config.send_json:
                connection.send(text)
            else:
                log.info("slice %d structure report: %s", item.slice, text)


def slice_reports(item: MapImages, class_names: tuple[str, ...]) -> list[StructureReport]:
    """Return the structure reports of one slice: one per classified map (the primary map, and T2 beside T1).

    The classes come from T1 alone, or from T1 and T2 when the slice has both maps (the primary map alone when it
    is neither), inside the fit's kept pixels (fitted, not rejected as implausible). A measured map with samples
    (``SliceMaps.samples``) has every structure's mean measured on each sample too, in the same structures.

    Parameters
    ----------
    item : The slice's maps.
    class_names : Names of the tissue classes in order of increasing T1 (of the primary map without a T1 map).

    Returns
    -------
    The primary map's report first.

    Raises
    ------
    ValueError
        If the kept pixels are too few for the classes, or a classified map is not positive there.
    """
    maps = item.maps
    classified_on: list[str] = [name for name in ("T1", "T2") if name in maps.values]
    if item.primary_map not in classified_on:
        classified_on = [item.primary_map]
    first, *rest = (np.asarray(maps.values[name]) for name in classified_on)
    tissues = classify_tissues(first, rest[0] if rest else None, mask=maps.kept, class_names=class_names)
    rois = rois_from_labels(tissues.labels, tissues.names_by_label)
    fov_x, fov_y, fov_z = item.field_of_view_mm
    n_y, n_x = first.shape
    geometry = SliceGeometry(fov_mm=(fov_y, fov_x), matrix=(n_y, n_x), slice_thickness_mm=fov_z)
    measured = [item.primary_map, *(name for name in classified_on if name != item.primary_map)]
    reports = []
    for quantity in measured:
        statistics = structure_statistics(
            maps.values[quantity], rois, geometry, quantity=quantity, sd_ms=maps.sds.get(quantity)
        )
        samples = maps.samples.get(quantity)
        over_samples = (
            [None] * len(rois) if samples is None else structure_statistics(samples, rois, geometry, quantity=quantity)
        )
        structures = tuple(
            StructureValues(
                name=s.structure,
                pixels=s.sample_pixels[0],
                volume_ml=s.volume_ml,
                mean=s.mean_ms,
                median=s.median_ms,
                mean_voxel_sd=s.mean_voxel_sd_ms,
                mean_sd=None if spread is None else spread.mean_sd_ms,
                mean_cv=None if spread is None else spread.mean_cv,
            )
            for s, spread in zip(statistics, over_samples, strict=True)
        )
        reports.append(
            StructureReport(
                slice=item.slice,
                quantity=quantity,
                units=maps.units[quantity],
                model=item.model,
                classified_on=tuple(classified_on),
                sd_method=maps.sd_method,
                voxel_ml=geometry.voxel_ml,
                structures=structures,
                n_samples=None if samples is None else len(samples),
            )
        )
    return reports
