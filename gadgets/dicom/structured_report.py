"""Structure reports as DICOM Structured Reports: a TID 1500 Measurement Report that references the map it measured.

One Comprehensive 3D SR instance per report (one slice, one map): a measurement group (TID 1501) per structure,
tracked by the structure's name, whose source image is the map's Parametric Map instance, with the structure's
volume (``ml``), the mean and median of the map (``ms``: concept name ``T1`` or ``T2``, derivation ``Mean`` or
``Median``) and the mean of the voxel SD map inside it (concept name ``Standard Deviation``, as the SD maps'
quantity, derivation ``Mean``). Units are UCUM. Undefined numbers (an empty structure) are left out. Patient, study
and frame of reference come from the map, so the report lands in the map's study.

``structured_report`` builds one report and is testable alone; ``StructuredReportWriter`` is DicomOutputGadget's
hand-off: it remembers the Parametric Map written for each slice and quantity and writes the SR of a report as soon
as both are there, whichever came first, into series :data:`REPORT_SERIES_NUMBER` of the stream's DICOM folder.
"""

import logging
from pathlib import Path

import highdicom as hd
import ismrmrd
import pydicom
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from gadgets.image_meta import meaning_of
from gadgets.structure_report import StructureReport

log = logging.getLogger(__name__)

REPORT_SERIES_NUMBER = 90
"""Series Number of the structured reports (``series_0090`` in the stream's DICOM folder)."""

_QUANTITIES = {"T1": codes.DCM.T1, "T2": codes.DCM.T2}
_FINDINGS = {
    "white_matter": codes.SCT.WhiteMatter,
    "grey_matter": codes.SCT.GrayMatter,
    "csf": codes.SCT.CerebrospinalFluid,
    "fat": codes.SCT.AdiposeTissue,
}
"""Finding type of the tissue classes with a SNOMED CT concept; any other structure is ``Tissue``."""
_ML = Code("ml", "UCUM", "milliliter")
_UCUM_MEANINGS = {"ms": "millisecond", "s": "second"}


def structured_report(
    report: StructureReport,
    map_dataset: Dataset,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = REPORT_SERIES_NUMBER,
) -> hd.sr.Comprehensive3DSR:
    """Return the TID 1500 Measurement Report of one structure report, referencing the map it measured.

    Parameters
    ----------
    report : The structures of one slice measured on one map.
    map_dataset : The map's Parametric Map instance (pixels not needed): the source image of every group and the
        report's evidence, patient and study.
    series_instance_uid : Series Instance UID of the report.
    sop_instance_uid : SOP Instance UID of the report.
    instance_number : Instance Number of the report.
    series_number : Series Number of the report.

    Returns
    -------
    The Structured Report.

    Raises
    ------
    ValueError
        If the report's quantity has no DICOM concept (``T1``, ``T2``) or its unit is not one of ms, s.
    """
    if report.quantity not in _QUANTITIES or report.units not in _UCUM_MEANINGS:
        raise ValueError(
            f"reports of {', '.join(_QUANTITIES)} in {', '.join(_UCUM_MEANINGS)} can be DICOM SRs, "
            f"got {report.quantity} in {report.units}"
        )
    classes_of = "+".join(report.classified_on)
    unit = Code(report.units, "UCUM", _UCUM_MEANINGS[report.units])
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(map_dataset, referenced_frame_numbers=[1])
    groups = []
    for structure in report.structures:
        measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=structure.volume_ml, unit=_ML)]
        for value, name, derivation in (
            (structure.mean, _QUANTITIES[report.quantity], codes.cid7464.Mean),
            (structure.median, _QUANTITIES[report.quantity], codes.cid7464.Median),
            (structure.mean_voxel_sd, codes.DCM.StandardDeviation, codes.cid7464.Mean),
        ):
            if value is not None:
                measurements.append(hd.sr.Measurement(name=name, value=value, unit=unit, derivation=derivation))
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[sop_instance_uid, structure.name]),
                    identifier=f"slice {report.slice} {structure.name}",
                ),
                finding_type=_FINDINGS.get(structure.name, codes.SCT.Tissue),
                measurements=measurements,
                source_images=[source],
            )
        )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["qmri-gadgets structure report"]),
            name="qmri-gadgets",
            manufacturer_name=map_dataset.get("Manufacturer") or None,
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.cid100.MRIUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[map_dataset],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=map_dataset.get("Manufacturer") or None,
        is_complete=True,
        series_description=f"{report.quantity} per structure ({report.model}, classes of {classes_of})"[:64],
    )


class StructuredReportWriter:
    """Writes the SR of every structure report of a stream once the map it references has been written.

    Parameters
    ----------
    folder : The stream's DICOM folder (``DicomSeriesWriter.folder``); the reports go to its ``series_0090``.
    nonce : The stream's random text (``DicomSeriesWriter.nonce``), mixed into the report series' UID.
    """

    def __init__(self, folder: Path, nonce: str) -> None:
        self.folder = Path(folder) / f"series_{REPORT_SERIES_NUMBER:04d}"
        self.series_uid = generate_uid(entropy_srcs=["qmri structure reports", nonce])
        self._maps: dict[tuple[int, str], Path] = {}
        self._waiting: dict[tuple[int, str], list[StructureReport]] = {}
        self._count = 0

    def image_written(self, image: ismrmrd.Image, paths: list[Path]) -> list[Path]:
        """Note a written image; if it is a map with reports waiting for it, write them. Return the SR files."""
        meaning = meaning_of(image)
        if not meaning.is_map or meaning.is_uncertainty or len(paths) != 1:
            return []
        key = (int(image.slice), meaning.quantity)
        self._maps[key] = paths[0]
        return [self._write(report, paths[0]) for report in self._waiting.pop(key, [])]

    def report(self, text: str) -> list[Path]:
        """Write the SR of a structure report's JSON text now if its map is written, else keep it for the map.

        Returns
        -------
        The SR file written, or none.

        Raises
        ------
        ValueError
            If the text is not a structure report of the supported version.
        """
        report = StructureReport.from_json(text)
        key = (report.slice, report.quantity)
        if key not in self._maps:
            self._waiting.setdefault(key, []).append(report)
            return []
        return [self._write(report, self._maps[key])]

    @property
    def waiting(self) -> list[tuple[int, str]]:
        """The slice and quantity of every report whose map has not been written (no SR for it yet)."""
        return [key for key, reports in self._waiting.items() for _ in reports]

    def _write(self, report: StructureReport, map_path: Path) -> Path:
        """Write one report's SR, referencing the map file; return its path."""
        self._count += 1
        sr = structured_report(
            report,
            pydicom.dcmread(map_path),
            series_instance_uid=self.series_uid,
            sop_instance_uid=generate_uid(entropy_srcs=["qmri structure report", self.series_uid, str(self._count)]),
            instance_number=self._count,
        )
        path = self.folder / f"{self._count:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        sr.save_as(partial, enforce_file_format=True)
        partial.replace(path)
        log.debug("slice %d: %s structure report in %s", report.slice, report.quantity, path)
        return path
