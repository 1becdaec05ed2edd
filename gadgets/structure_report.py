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
        "mean_cv": 0.0069,              that SD over the mean of the samples' structure means
        "mean_lower": 861.0,            calibrated interval of the structure's mean: mean -+ scale * mean_voxel_sd
        "mean_upper": 949.4,            (lower clamped at 0), with ``interval``; null without a calibration
        "out_of_distribution": false},  more than a quarter of its pixels flagged out of distribution; null when
       ...],                            the map is not learned or the calibration has no thresholds
     "interval": {"calibration_id": "t1_molli-fit_sd-a0.1-d0.1", "alpha": 0.1, "delta": 0.1, "scale": 1.83}}

Numbers that are undefined (an empty class, a map without an SD map, maps without samples) are ``null``, never NaN.
The samples are the maps the PUQ fit makes of every MC sample (``SliceMaps.samples``; the classical fit has none),
measured in the same structures as the map: ``mean_sd`` says how far off the structure's mean may be, which the mean
voxel SD does not (seed paper 002). ``n_samples``, ``mean_sd``, ``mean_cv``, ``mean_lower``, ``mean_upper``,
``out_of_distribution`` and ``interval`` were added to version 1 without changing any other field's meaning;
``StructureReport.from_json`` reads reports without them as null.

With a ``calibration`` property (a calibration file of ``qmri calibrate`` with structure scales: the same chain's),
every structure of at least ``MIN_STRUCTURE_PIXELS`` pixels of the calibrated map gets an interval for its mean that
covers the true mean of the structure's pixels for at least 1 - alpha of a slice's structures on average (with
probability 1 - delta over the calibration), for slices like the calibration's; at an acceleration the calibration
does not cover, the reports go without intervals and the client gets one WARNING text.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from gadgets.intervals import header_acceleration, out_of_distribution_flags
from gadgets.items import MapImages
from gadgets.runtime.config import GadgetConfig, PropertyError, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.calibration.files import IntervalCalibration, load_interval_calibration, shipped_calibrations
from qmri_models.calibration.out_of_distribution import structure_flagged
from qmri_models.structures.classify import (
    HEAD_CLASSES,
    OUTLIER_NAME,
    OUTSIDE_NAME,
    T2_CLASSES,
    classes_for,
    classify_tissues,
)
from qmri_models.structures.geometry import SliceGeometry
from qmri_models.structures.means import MIN_STRUCTURE_PIXELS
from qmri_models.structures.rois import Roi, rois_from_labels
from qmri_models.structures.statistics import StructureStatistics, structure_statistics

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
    mean_lower: float | None = None
    mean_upper: float | None = None
    out_of_distribution: bool | None = None


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
    interval: dict[str, Any] | None = None
    """The calibrated interval of the structure means: calibration_id, alpha, delta, scale; None without."""

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
            "interval": self.interval,
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
                interval=body.get("interval"),
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
        "",
        "tissue classes in order of increasing T1 (T2 for a T2 map alone), comma-separated; empty: "
        f"{','.join(HEAD_CLASSES)} for T1, {','.join(T2_CLASSES)} for a T2 map alone",
    )
    send_json: bool = prop(True, "send each report to the client as a JSON TEXT message (false: log it only)")
    calibration: str = prop(
        "",
        "calibration with structure scales (a shipped name, or in site chains a file of qmri calibrate) for an "
        "interval of every structure's mean; empty: no intervals",
        site=True,
        client_choices=("", *shipped_calibrations()),
    )

    def __post_init__(self) -> None:
        names = self.class_names
        if len(names) > MAX_CLASSES:
            raise PropertyError(
                "classes", f"at most {MAX_CLASSES} classes (each is a mixture component), got {len(names)}"
            )
        if len(set(names)) != len(names) or {OUTSIDE_NAME, OUTLIER_NAME} & set(names):
            raise PropertyError(
                "classes",
                f"needs distinct names other than {OUTSIDE_NAME!r} and {OUTLIER_NAME!r}, got {self.classes!r}",
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names given, in order (empty: the defaults, ``classes_of``)."""
        return tuple(name.strip() for name in self.classes.split(",") if name.strip())

    def classes_of(self, quantity: str) -> tuple[str, ...]:
        """Return the classes a map of ``quantity`` is classified into: the given ones, or its defaults."""
        return self.class_names or classes_for(quantity)


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
    interval = None
    if config.calibration:
        calibration = load_interval_calibration(config.calibration)
        interval, warning = structure_interval(
            calibration, header_acceleration(connection.header), config.classes_of(calibration.quantity)
        )
        if warning:
            log.warning("%s", warning)
            connection.send(warning)
    connection.filter(MapImages)
    for item in connection:
        reports = slice_reports(item, config.classes_of(item.primary_map), interval)
        connection.send(item)  # first, so DicomOutputGadget has written the map its report references
        for report in reports:
            text = report.to_json()
            if config.send_json:
                connection.send(text)
            else:
                log.info("slice %d structure report: %s", item.slice, text)


@dataclass(frozen=True)
class StructureInterval:
    """A calibration's structure-level interval at the stream's acceleration."""

    calibration: IntervalCalibration
    acceleration: int
    scale: float
    """Lambda of ``mean -+ lambda * mean voxel SD``."""

    def describe(self) -> dict[str, Any]:
        """Return the report's ``interval`` field."""
        c = self.calibration
        return {"calibration_id": c.id, "alpha": c.alpha, "delta": c.delta, "scale": self.scale}


def structure_interval(
    calibration: IntervalCalibration, acceleration: int, class_names: tuple[str, ...]
) -> tuple[StructureInterval | None, str]:
    """Return the calibration's structure interval at ``acceleration``, or None and the WARNING text saying why.

    Raises
    ------
    ValueError
        If the calibration has no structure scales or classified other classes than ``class_names``.
    """
    if not calibration.structure_scales:
        raise ValueError(
            f"calibration {calibration.id!r} has no structure scales; recalibrate with this version of qmri calibrate"
        )
    calibrated_classes = tuple(calibration.recipe.get("structure_classes", ()))
    if calibrated_classes != class_names:
        raise ValueError(
            f"calibration {calibration.id!r} calibrated the structures of classes {list(calibrated_classes)}, "
            f"the gadget classifies {list(class_names)}: their intervals would promise nothing"
        )
    if acceleration not in calibration.structure_scales:
        return None, (
            f"WARNING no structure intervals for this scan: calibration {calibration.id} covers accelerations "
            f"{sorted(calibration.structure_scales)}, the scan is at {acceleration}; reports are sent without them"
        )
    return StructureInterval(calibration, acceleration, calibration.structure_scales[acceleration].scale), ""


def slice_reports(
    item: MapImages, class_names: tuple[str, ...], interval: StructureInterval | None = None
) -> list[StructureReport]:
    """Return the structure reports of one slice: one per classified map (the primary map, and T2 beside T1).

    The classes come from T1 alone, or from T1 and T2 when the slice has both maps (the primary map alone when it
    is neither), inside the fit's kept pixels (fitted, not rejected as implausible). A measured map with samples
    (``SliceMaps.samples``) has every structure's mean measured on each sample too, in the same structures.

    Parameters
    ----------
    item : The slice's maps.
    class_names : Names of the tissue classes in order of increasing T1 (of the primary map without a T1 map).
    interval : The structure-level interval of the calibrated map, or None for no intervals.

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
    flags = None if interval is None else out_of_distribution_flags(item, interval.calibration, interval.acceleration)
    reports = []
    for quantity in measured:
        calibrated = interval is not None and interval.calibration.quantity == quantity
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
                **(_interval_fields(s, roi, interval, flags) if calibrated and interval is not None else {}),
            )
            for s, spread, roi in zip(statistics, over_samples, rois, strict=True)
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
                interval=interval.describe() if calibrated and interval is not None else None,
            )
        )
    return reports


def _interval_fields(
    statistics: StructureStatistics, roi: Roi, interval: StructureInterval, flags: np.ndarray | None
) -> dict[str, Any]:
    """Return a structure's ``mean_lower``, ``mean_upper`` and ``out_of_distribution`` (None where undefined)."""
    mean, sd = statistics.mean_ms, statistics.mean_voxel_sd_ms
    lower = upper = None
    if mean is not None and sd is not None and statistics.sample_pixels[0] >= MIN_STRUCTURE_PIXELS:
        lower, upper = max(mean - interval.scale * sd, 0.0), mean + interval.scale * sd
    return {
        "mean_lower": lower,
        "mean_upper": upper,
        "out_of_distribution": None if flags is None else structure_flagged(flags, roi.mask),
    }
