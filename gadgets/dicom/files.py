"""MRD images to DICOM files: one series per ``image_series_index``; maps as Parametric Maps with exact float values.

Which DICOM objects, and why
----------------------------
Quantitative maps (``gadgets.image_meta``: T1, T2, their SD maps ...) become highdicom Parametric Map
instances with Float Pixel Data, so every float32 value in ms arrives exactly as the fit produced it. Their Real
World Value Mapping (identity slope and intercept) names the unit in UCUM (``ms``) and the quantity (DCM ``T1``,
``T2`` ...; ``Standard Deviation`` for uncertainty maps; none for the lower and upper bounds of a calibrated interval,
which are no estimates of the quantity and have no DICOM code: their series description, LUT explanation and content
description say which bound of which interval they are). A classic MR Image cannot hold float pixels: a 16-bit
integer map with a slope would lose up to half a step, and MR viewers ignore Rescale Slope.

Every other image (the per-phase magnitude images) becomes a classic MR Image Storage instance, which every PACS and
viewer shows. highdicom has no constructor for MR images (only a conversion of existing ones to the legacy enhanced
form), so ``highdicom.SOPClass`` writes the patient, study, series, equipment and SOP common modules and this
module adds the MR, image plane and pixel attributes. Float pixels are stored as 16-bit unsigned integers with a
linear scale per image in a Real World Value Mapping (``value = stored * slope + intercept``, quantisation error at
most ``slope / 2`` = the image's range / 131070); the MR IOD has no Modality LUT, so no Rescale Slope. Complex images
are written as magnitude. An image with a preparation time (a phase image) carries the DICOM labels of the
preparation whose times the header holds (``qmri_models.protocols``): Scanning Sequence ``IR`` and the Inversion Time
for an inversion; Sequence Variant ``MP`` and no time attribute (the MR IOD has none) for a saturation or T2
preparation, so a saturation-recovery series is never labelled inversion recovery.

A Parametric Map must name its source images. The writer keeps the headers (no pixels) of the last non-map images it
wrote for each slice of the stream, and a single-plane map on the same grid references them: the phase images the
fit used, written to the same folder and sent to the same node. A map without such images in the stream (a chain
that sends only maps) is built from a header-only template of its own plane, and the references to that template
are removed, so no file points to an instance that was never written.

Identifiers
-----------
Patient, study and frame of reference come from the ISMRMRD header. Without ``studyInstanceUID`` the study UID is
derived from the patient and study fields, so every series of a scan, and every reconstruction of it, lands in one
study; without ``frameOfReferenceUID`` the frame of reference is derived from the study and ``measurementID``.
Series and instance UIDs mix in a random nonce per stream (``seriesInstanceUIDRoot`` as prefix when it leaves room),
so two reconstructions of the same scan never share a series. The Series Number is the ``image_series_index``
(:data:`UNSET_SERIES_NUMBER` for 0); instances are numbered in arrival order within their series.

Geometry
--------
ISMRMRD positions and directions are in the DICOM patient coordinate system (LPS), mm. Image rows run along
``phase_dir`` (y) and columns along ``read_dir`` (x); ``position`` is the centre of the field of view, so the first
pixel's centre is ``position - (n_x - 1) / 2 * dx * read_dir - (n_y - 1) / 2 * dy * phase_dir``, with
``dx = field_of_view[0] / n_x``, ``dy = field_of_view[1] / n_y``; each of ``n_z`` planes is ``field_of_view[2] / n_z``
thick and shifted along ``slice_dir``.
"""

import copy
import importlib.metadata
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import ismrmrd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from gadgets.image_meta import ImageMeaning, meaning_of
from gadgets.windowing import percentile_window
from qmri_models.protocols import Preparation, header_preparation

log = logging.getLogger(__name__)

STORED_MAX = 65535
"""Largest stored value of an MR image's 16-bit unsigned pixels."""

_QUANTITIES = {"T1": codes.DCM.T1, "T2": codes.DCM.T2, "T2STAR": codes.DCM.T2Star, "PD": codes.DCM.ProtonDensity}
_DEFAULT_UNITS = {"T1": "ms", "T2": "ms", "T2STAR": "ms"}
"""Units of a map whose meta names none: relaxation times are in ms across the code (STYLE.md)."""
_UCUM_MEANINGS = {"ms": "millisecond", "s": "second", "1": "no units", "%": "percent", "Hz": "hertz"}
_ARBITRARY_UNIT = Code("[arb'U]", "UCUM", "arbitrary unit")
_CHARACTER_SET = "ISO_IR 192"
UNSET_SERIES_NUMBER = 1000
"""Series Number of images with ``image_series_index`` 0 (unset): DICOM series numbers start at 1."""
_UID_ENTROPY_DIGITS = 20
_SOFTWARE = f"qmri-gadgets {importlib.metadata.version('qmri-gadgets')}"


@dataclass(frozen=True)
class Plane:
    """Where one 2D plane of an image lies in the patient coordinate system (LPS)."""

    position_mm: tuple[float, float, float]
    """Centre of the first (top left) pixel, in mm (DICOM Image Position (Patient))."""
    orientation: tuple[float, float, float, float, float, float]
    """Direction cosines of a row (``read_dir``) then of a column (``phase_dir``)."""
    spacing_mm: tuple[float, float]
    """Distance between rows (along y) and between columns (along x), in mm (DICOM Pixel Spacing)."""
    thickness_mm: float
    """Slice thickness in mm."""
    rows: int
    columns: int

    @property
    def slice_location_mm(self) -> float:
        """Position along the plane's normal (row direction x column direction), in mm."""
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        return float(np.dot(normal, self.position_mm))


def image_planes(image: ismrmrd.Image) -> list[Plane]:
    """Return the plane of every ``z`` of an image, from its header (``position``, directions, ``field_of_view``).

    Parameters
    ----------
    image : An MRD image; data shape `(cha, z, y, x)`.

    Returns
    -------
    One plane per ``z``, in order.

    Raises
    ------
    ValueError
        If the field of view is not positive.
    """
    n_z, n_y, n_x = image.data.shape[1:]
    fov = np.asarray(image.field_of_view, dtype=np.float64)
    if not np.all(fov > 0):
        raise ValueError(f"image series {image.image_series_index}: field_of_view must be positive mm; got {fov}")
    dx, dy, dz = fov[0] / n_x, fov[1] / n_y, fov[2] / n_z
    read, phase, normal = (np.asarray(v, dtype=np.float64) for v in (image.read_dir, image.phase_dir, image.slice_dir))
    corner = np.asarray(image.position, dtype=np.float64) - (n_x - 1) / 2 * dx * read - (n_y - 1) / 2 * dy * phase
    orientation = (*map(float, read), *map(float, phase))
    planes = []
    for k in range(n_z):
        position = corner + (k - (n_z - 1) / 2) * dz * normal
        planes.append(
            Plane(
                position_mm=(float(position[0]), float(position[1]), float(position[2])),
                orientation=orientation,  # type: ignore[arg-type]
                spacing_mm=(float(dy), float(dx)),
                thickness_mm=float(dz),
                rows=n_y,
                columns=n_x,
            )
        )
    return planes


@dataclass(frozen=True)
class ScanContext:
    """What every DICOM instance of one stream shares, read once from the ISMRMRD header."""

    study_uid: str
    frame_of_reference_uid: str
    series_uid_prefix: str | None
    """Prefix of series UIDs (``seriesInstanceUIDRoot`` plus a dot), or None for pydicom's."""
    measurement: str
    """``measurementID``, or empty."""
    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_id: str
    study_date: str
    study_time: str
    accession_number: str
    referring_physician: str
    series_date: str
    series_time: str
    protocol: str
    """Protocol name; the start of every series description."""
    manufacturer: str
    model: str
    device_serial_number: str
    body_part: str
    preparation: Preparation | None
    """The preparation whose times the header holds (``qmri_models.protocols.header_preparation``): it labels every
    image with a preparation time; None when the header holds no preparation times."""
    mr_attributes: Dataset
    """Attributes every MR image carries beyond highdicom's: sequence, TR, TE, flip angle, field, position ..."""

    def sop_keywords(self) -> dict[str, Any]:
        """Return the patient, study and equipment keyword arguments of ``highdicom.SOPClass`` (None when empty)."""
        keywords = {
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "patient_birth_date": self.patient_birth_date,
            "patient_sex": self.patient_sex,
            "study_id": self.study_id,
            "study_date": self.study_date,
            "study_time": self.study_time,
            "accession_number": self.accession_number,
            "referring_physician_name": self.referring_physician,
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.model,
            "software_versions": _SOFTWARE,
            "series_date": self.series_date,
            "series_time": self.series_time if self.series_date else "",
            "specific_character_set": _CHARACTER_SET,
        }
        return {name: value or None for name, value in keywords.items()}


def scan_context(header: ismrmrd.xsd.ismrmrdHeader) -> ScanContext:
    """Return the patient, study, frame of reference, equipment and MR attributes of a stream.

    Parameters
    ----------
    header : The stream's ISMRMRD header.

    Returns
    -------
    What every instance of the stream shares.
    """
    subject = header.subjectInformation or ismrmrd.xsd.subjectInformationType()
    study = header.studyInformation or ismrmrd.xsd.studyInformationType()
    measurement = header.measurementInformation or ismrmrd.xsd.measurementInformationType()
    system = header.acquisitionSystemInformation or ismrmrd.xsd.acquisitionSystemInformationType()
    patient = [_text(subject.patientID), _text(subject.patientName), _dicom_date(subject.patientBirthdate)]
    study_fields = [_text(study.studyID), _dicom_date(study.studyDate), _dicom_time(study.studyTime)]
    study_fields += [_text(study.accessionNumber), _text(study.studyDescription)]
    measurement_id = _text(measurement.measurementID)
    identity = [*patient, *study_fields]
    if not any(identity):
        identity = [measurement_id or header.toXML()]
    study_uid = _given_uid(study.studyInstanceUID, "studyInstanceUID") or generate_uid(
        entropy_srcs=["qmri study", *identity]
    )
    frame_uid = _given_uid(measurement.frameOfReferenceUID, "frameOfReferenceUID") or generate_uid(
        entropy_srcs=["qmri frame of reference", study_uid, measurement_id or header.toXML()]
    )
    root = _given_uid(measurement.seriesInstanceUIDRoot, "seriesInstanceUIDRoot")
    prefix = f"{root}." if root and len(root) < 64 - _UID_ENTROPY_DIGITS else None
    sex = _text(subject.patientGender).upper()
    return ScanContext(
        study_uid=study_uid,
        frame_of_reference_uid=frame_uid,
        series_uid_prefix=prefix,
        measurement=measurement_id,
        patient_name=patient[1],
        patient_id=patient[0],
        patient_birth_date=patient[2],
        patient_sex=sex if sex in {"M", "F", "O"} else "",
        study_id=study_fields[0][:16],
        study_date=study_fields[1],
        study_time=study_fields[2],
        accession_number=study_fields[3][:16],
        referring_physician=_text(study.referringPhysicianName),
        series_date=_dicom_date(measurement.seriesDate),
        series_time=_dicom_time(measurement.seriesTime),
        protocol=_text(measurement.protocolName) or _text(measurement.sequenceName),
        manufacturer=_text(system.systemVendor) or "qmri-gadgets",
        model=_text(system.systemModel) or "qmri-gadgets",
        device_serial_number=_text(system.deviceSerialNumber) or _text(system.deviceID) or "unknown",
        body_part=_text(study.bodyPartExamined).upper()[:16],
        preparation=_header_preparation(header),
        mr_attributes=_mr_attributes(header),
    )


def _header_preparation(header: ismrmrd.xsd.ismrmrdHeader) -> Preparation | None:
    """Return the preparation whose times the header holds: a named user parameter list, else TI."""
    user = header.userParameters
    names = {p.name for p in user.userParameterDouble} if user is not None else set()
    return header_preparation(names, has_ti=bool(header.sequenceParameters and header.sequenceParameters.TI))


def _mr_attributes(header: ismrmrd.xsd.ismrmrdHeader) -> Dataset:
    """Return the study, series and MR Image attributes of the acquisition that highdicom.SOPClass does not set."""
    ds = Dataset()
    if header.studyInformation and header.studyInformation.studyDescription:
        ds.StudyDescription = _text(header.studyInformation.studyDescription)[:64]
    ds.ScanningSequence = "RM"  # research mode: the sequence type is not in the header
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    encoded = header.encoding[0].encodedSpace.matrixSize if header.encoding else None
    ds.MRAcquisitionType = "3D" if encoded is not None and encoded.z > 1 else "2D"
    sequence = header.sequenceParameters
    ds.RepetitionTime = _ds(sequence.TR[0]) if sequence and sequence.TR else None
    ds.EchoTime = _ds(sequence.TE[0]) if sequence and sequence.TE else None
    ds.EchoTrainLength = None
    if sequence and sequence.flipAngle_deg:
        ds.FlipAngle = _ds(sequence.flipAngle_deg[0])
    system = header.acquisitionSystemInformation
    if system and system.systemFieldStrength_T:
        ds.MagneticFieldStrength = _ds(system.systemFieldStrength_T)
    if header.experimentalConditions and header.experimentalConditions.H1resonanceFrequency_Hz:
        ds.ImagingFrequency = _ds(header.experimentalConditions.H1resonanceFrequency_Hz / 1e6)
    measurement = header.measurementInformation
    position = measurement.patientPosition if measurement else None
    ds.PatientPosition = position.value if position is not None else ""
    if measurement and measurement.sequenceName:
        ds.SequenceName = _text(measurement.sequenceName)[:16]
    if measurement and measurement.protocolName:
        ds.ProtocolName = _text(measurement.protocolName)[:64]
    if system and system.institutionName:
        ds.InstitutionName = _text(system.institutionName)[:64]
    if system and system.stationName:
        ds.StationName = _text(system.stationName)[:16]
    return ds


@dataclass
class _Series:
    """One written series: its UID, number, description, folder and instances so far."""

    uid: str
    number: int
    description: str
    folder: Path
    count: int = 0


class DicomSeriesWriter:
    """Writes the MRD images of one stream as DICOM files, one series per ``image_series_index``.

    Files go to ``folder/<measurementID>_<nonce>/series_<index>/<instance>.dcm``, written to a temporary name and
    renamed, so a file that exists is complete.

    Parameters
    ----------
    header : The stream's ISMRMRD header.
    folder : Folder for this stream's files (created as needed).
    nonce : Per-stream random text mixed into series and instance UIDs; a fresh one when None.
    """

    def __init__(self, header: ismrmrd.xsd.ismrmrdHeader, folder: Path, *, nonce: str | None = None) -> None:
        self.context = scan_context(header)
        self.nonce = nonce if nonce is not None else secrets.token_hex(16)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.context.measurement) or "scan"
        self.folder = Path(folder) / f"{name}_{self.nonce[:8]}"
        self._series: dict[int, _Series] = {}
        self._sources: dict[int, tuple[int, list[Dataset]]] = {}

    def write(self, image: ismrmrd.Image) -> list[Path]:
        """Write one MRD image: a Parametric Map for a map, else one MR image per plane.

        Parameters
        ----------
        image : An MRD image with one channel; data shape `(1, z, y, x)`.

        Returns
        -------
        The written files.

        Raises
        ------
        ValueError
            If the image has more than one channel, or its meta or geometry is not usable.
        """
        n_channels = image.data.shape[0]
        if n_channels != 1:
            raise ValueError(
                f"DICOM output takes coil-combined images; image series {image.image_series_index} "
                f"index {image.image_index} has {n_channels} channels"
            )
        meaning = meaning_of(image)
        series = self._series_of(image, meaning)
        planes = image_planes(image)
        values = image.data[0]
        if np.iscomplexobj(values):
            values = np.abs(values)
        if meaning.is_map:
            return [self._save(self._parametric_map(image.slice, meaning, series, planes, values), series)]
        paths = []
        for plane, pixels in zip(planes, values, strict=True):
            ds = self._mr_image(meaning, series, plane, pixels)
            paths.append(self._save(ds, series))
            self._remember_source(image.slice, series.number, ds)
        return paths

    def _series_of(self, image: ismrmrd.Image, meaning: ImageMeaning) -> _Series:
        """Return the series of an image, opening it (UID, description, folder) at its first image."""
        index = int(image.image_series_index)
        if index not in self._series:
            uid = generate_uid(
                prefix=self.context.series_uid_prefix or PYDICOM_ROOT_UID,
                entropy_srcs=["qmri series", self.context.study_uid, self.nonce, str(index)],
            )
            self._series[index] = _Series(
                uid,
                index or UNSET_SERIES_NUMBER,
                series_description(self.context.protocol, meaning),
                self.folder / f"series_{index:04d}",
            )
        return self._series[index]

    def _next_instance(self, series: _Series) -> tuple[int, str]:
        """Return the next instance number of a series and its SOP Instance UID."""
        series.count += 1
        return series.count, generate_uid(entropy_srcs=["qmri instance", series.uid, str(series.count)])

    def _mr_image(
        self, meaning: ImageMeaning, series: _Series, plane: Plane, pixels: np.ndarray, *, template: bool = False
    ) -> Dataset:
        """Return an MR Image Storage dataset of one plane; pixels shape `(y, x)`.

        A ``template`` (the stand-in source of a map without written source images) takes no instance number from
        the series and gets a random SOP Instance UID.
        """
        number, uid = (1, generate_uid()) if template else self._next_instance(series)
        stored, slope, intercept = quantise_uint16(pixels)
        ds = hd.SOPClass(
            study_instance_uid=self.context.study_uid,
            series_instance_uid=series.uid,
            series_number=series.number,
            sop_instance_uid=uid,
            sop_class_uid=MRImageStorage,
            instance_number=number,
            modality="MR",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=series.description,
            **self.context.sop_keywords(),
        )
        ds.update(copy.deepcopy(self.context.mr_attributes))  # setting an attribute changes its element in place
        _add_anatomy(ds, self.context.body_part)
        ds.FrameOfReferenceUID = self.context.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [_ds(v) for v in plane.position_mm]
        ds.ImageOrientationPatient = [_ds(v) for v in plane.orientation]
        ds.PixelSpacing = [_ds(v) for v in plane.spacing_mm]
        ds.SliceThickness = _ds(plane.thickness_mm)
        ds.SliceLocation = _ds(plane.slice_location_mm)
        if meaning.prep_time_ms is not None and self.context.preparation is not None:
            _label_preparation(ds, self.context.preparation, meaning.prep_time_ms)
        if meaning.comment:
            ds.ImageComments = meaning.comment
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.rows, plane.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        units = _ucum(meaning.units) if meaning.units else _ARBITRARY_UNIT
        ds.RealWorldValueMappingSequence = [
            hd.pm.RealWorldValueMapping(
                lut_label=meaning.role[:16],
                lut_explanation=f"{meaning.role} ({units.meaning})"[:64],
                unit=units,
                value_range=(0, STORED_MAX),
                slope=slope,
                intercept=intercept,
            )
        ]
        centre, width = meaning.window or percentile_window(pixels)
        ds.WindowCenter = _ds((centre - intercept) / slope)
        ds.WindowWidth = _ds(max(width / slope, 1.0))
        ds.PixelData = stored.tobytes()
        return ds

    def _remember_source(self, slice_index: int, series_number: int, ds: Dataset) -> None:
        """Keep the header of a written MR image as a possible source of this slice's maps (latest series only)."""
        kept_series, headers = self._sources.get(slice_index, (series_number, []))
        if kept_series != series_number:
            headers = []
        del ds.PixelData
        self._sources[slice_index] = (series_number, [*headers, ds])

    def _sources_on(self, slice_index: int, planes: list[Plane]) -> list[Dataset]:
        """Return the written MR images of a slice on the same grid as a single-plane map, or none."""
        if len(planes) != 1:
            return []
        plane = planes[0]
        return [
            ds
            for ds in self._sources.get(slice_index, (0, []))[1]
            if (ds.Rows, ds.Columns) == (plane.rows, plane.columns)
            and np.allclose([float(v) for v in ds.ImagePositionPatient], plane.position_mm, atol=1e-3)
            and np.allclose([float(v) for v in ds.ImageOrientationPatient], plane.orientation, atol=1e-6)
            and np.allclose([float(v) for v in ds.PixelSpacing], plane.spacing_mm, atol=1e-6)
        ]

    def _parametric_map(
        self, slice_index: int, meaning: ImageMeaning, series: _Series, planes: list[Plane], values: np.ndarray
    ) -> hd.pm.ParametricMap:
        """Return a Parametric Map of a map image with one frame per plane; values shape `(z, y, x)` in the unit."""
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float32)
        finite = values[np.isfinite(values)]
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        quantity = meaning.quantity
        units = _ucum(meaning.units or _DEFAULT_UNITS.get(quantity, "1"))
        what, definition = _map_kind(meaning)
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=meaning.role[:16],
            lut_explanation=f"{quantity} {what} ({units.meaning})"[:64],
            unit=units,
            value_range=value_range,
            slope=1.0,
            intercept=0.0,
            quantity_definition=definition,
        )
        centre, width = meaning.window or percentile_window(finite)
        sources = self._sources_on(slice_index, planes)
        template = not sources
        if template:
            sources = [self._mr_image(meaning, series, planes[0], np.zeros(values.shape[1:]), template=True)]
        number, uid = self._next_instance(series)
        label = re.sub(r"[^A-Z0-9_]", "_", f"{meaning.role.upper()}_MAP")
        pm = hd.pm.ParametricMap(
            source_images=sources,
            pixel_array=values,
            series_instance_uid=series.uid,
            series_number=series.number,
            sop_instance_uid=uid,
            instance_number=number,
            manufacturer=self.context.manufacturer,
            manufacturer_model_name=self.context.model,
            software_versions=_SOFTWARE,
            device_serial_number=self.context.device_serial_number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=centre, window_width=width, voi_lut_function="LINEAR_EXACT")
            ],
            content_description=(meaning.comment or f"{quantity} {what}")[:64],
            content_label=label[:16],
            pixel_measures=hd.PixelMeasuresSequence(
                pixel_spacing=list(planes[0].spacing_mm),
                slice_thickness=planes[0].thickness_mm,
                spacing_between_slices=planes[0].thickness_mm if len(planes) > 1 else None,
            ),
            plane_orientation=hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, planes[0].orientation),
            plane_positions=[
                hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, plane.position_mm) for plane in planes
            ],
            series_description=series.description,
            series_date=self.context.series_date or None,
            series_time=(self.context.series_time or None) if self.context.series_date else None,
        )
        _add_anatomy(pm, self.context.body_part)
        if template:
            _drop_source_references(pm)
        return pm

    def _save(self, ds: Dataset, series: _Series) -> Path:
        """Write a dataset as ``series.folder/<instance>.dcm`` (temporary name, then rename); return the path."""
        path = series.folder / f"{int(ds.InstanceNumber):05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        ds.save_as(partial, enforce_file_format=True)
        partial.replace(path)
        return path


def series_description(protocol: str, meaning: ImageMeaning) -> str:
    """Return a series description (at most 64 characters) that says map or uncertainty for map series.

    Parameters
    ----------
    protocol : The protocol name.
    meaning : The meaning of the series' first image.

    Returns
    -------
    ``<protocol><sequence description>``, plus ``<quantity> map [<unit>]``, ``<quantity> uncertainty SD [<unit>]``
    or ``<quantity> lower bound 90% [<unit>]`` (the bound of a calibrated interval, its coverage) for maps.
    """
    base = f"{protocol}{meaning.sequence_description}".strip()
    if not meaning.is_map:
        return base[:64] or meaning.role[:64]
    units = meaning.units or _DEFAULT_UNITS.get(meaning.quantity, "1")
    if meaning.is_uncertainty:
        kind = "uncertainty SD"
    elif meaning.bound is not None:
        kind = f"{meaning.bound} bound {_coverage(meaning)}".strip()
    else:
        kind = "map"
    label = f"{meaning.quantity} {kind} [{units}]"
    return f"{base[: 63 - len(label)]} {label}".strip()


def _coverage(meaning: ImageMeaning) -> str:
    """Return the promised coverage of a bound's interval (``90%`` for alpha 0.1), or empty when alpha is unknown."""
    return "" if meaning.alpha is None else f"{100 * (1 - meaning.alpha):g}%"


def _map_kind(meaning: ImageMeaning) -> tuple[str, Code | None]:
    """Return what a map series is, for people, and its Quantity Definition code (None: no code fits).

    An SD map is a Standard Deviation; a bound of an interval is neither the quantity (its values are not estimates
    of it) nor any DICOM quantity, so it gets no code and says what it is in words.
    """
    if meaning.is_uncertainty:
        return "uncertainty (standard deviation)", codes.DCM.StandardDeviation
    if meaning.bound is not None:
        return f"{meaning.bound} bound of {_coverage(meaning) or 'a'} calibrated interval", None
    return "map", _QUANTITIES.get(meaning.quantity)


def quantise_uint16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Return real values as 16-bit stored values with the slope and intercept that map them back.

    ``value = stored * slope + intercept`` within ``slope / 2``; unsigned integers up to 65535 are kept exactly
    (slope 1, intercept 0). Not-a-number pixels are stored as the intercept's value.

    Parameters
    ----------
    values : Real pixel values. Shape `(y, x)`.

    Returns
    -------
    Stored values (uint16, same shape), slope and intercept.
    """
    if values.dtype.kind in "ui" and values.size and values.min() >= 0 and values.max() <= STORED_MAX:
        return values.astype(np.uint16), 1.0, 0.0
    real = values.astype(np.float64)
    finite = real[np.isfinite(real)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    slope = (high - low) / STORED_MAX if high > low else 1.0
    stored = np.rint((np.nan_to_num(real, nan=low, posinf=high, neginf=low) - low) / slope)
    return np.clip(stored, 0, STORED_MAX).astype(np.uint16), slope, low


def _ds(value: float) -> DSfloat:
    """Return a number as a DICOM decimal string of at most 16 characters."""
    return DSfloat(value, auto_format=True)


def _label_preparation(ds: Dataset, preparation: Preparation, prep_time_ms: float) -> None:
    """Set the Scanning Sequence, Sequence Variant and preparation-time attribute of an image of a preparation."""
    ds.ScanningSequence = list(preparation.scanning_sequence)
    ds.SequenceVariant = list(preparation.sequence_variant)
    if preparation.prep_time_attribute is not None:
        setattr(ds, preparation.prep_time_attribute, _ds(prep_time_ms))


def _ucum(units: str) -> Code:
    """Return the UCUM code of a unit string (``ms``, ``s``, ``1``, ``%`` ...; ``a.u.`` is the arbitrary unit)."""
    if units in ("a.u.", _ARBITRARY_UNIT.value):
        return _ARBITRARY_UNIT
    return Code(units, "UCUM", _UCUM_MEANINGS.get(units, units))


_UNPAIRED_BODY_PARTS = frozenset(
    {
        "ABDOMEN",
        "BRAIN",
        "CHEST",
        "CSPINE",
        "HEAD",
        "HEART",
        "LIVER",
        "LSPINE",
        "NECK",
        "PELVIS",
        "PROSTATE",
        "SPINE",
        "TSPINE",
        "WHOLEBODY",
    }
)
"""Body Part Examined defined terms (DICOM PS3.16 CID 4031) of structures that are not paired: no Laterality."""


def _add_anatomy(ds: Dataset, body_part: str) -> None:
    """Set Body Part Examined, and an empty Laterality unless the part is known to be unpaired.

    Laterality (Type 2C) is required for a paired structure and must be absent for an unpaired one; for a part we
    cannot place (none, a paired one whose side the header does not give, or a term outside the defined ones such as
    a phantom's ``PHANTOM``) it is present and empty, which the standard allows when it is unknown.
    """
    if body_part:
        ds.BodyPartExamined = body_part
    if body_part.upper() not in _UNPAIRED_BODY_PARTS:
        ds.Laterality = ""


def _drop_source_references(pm: Dataset) -> None:
    """Remove the references to a map's stand-in source image, which is never written."""
    for name in ("SourceImageSequence", "ReferencedSeriesSequence"):
        if name in pm:
            delattr(pm, name)
    for group in (*pm.SharedFunctionalGroupsSequence, *pm.PerFrameFunctionalGroupsSequence):
        if "DerivationImageSequence" in group:
            del group.DerivationImageSequence


def _given_uid(value: object, name: str) -> str:
    """Return a UID from the header, or empty when absent or not a valid UID (logged)."""
    text = _text(value)
    if text and not UID(text).is_valid:
        log.warning("ISMRMRD header %s %r is not a valid DICOM UID; deriving one instead", name, text)
        return ""
    return text


def _text(value: object) -> str:
    """Return a header value as stripped text; empty for None."""
    return "" if value is None else str(value).strip()


def _dicom_date(value: object) -> str:
    """Return an xsd date (``YYYY-MM-DD``) as a DICOM DA (``YYYYMMDD``); empty for None."""
    return _text(value).replace("-", "")[:8]


def _dicom_time(value: object) -> str:
    """Return an xsd time (``hh:mm:ss[.ffffff]``) as a DICOM TM (``hhmmss[.ffffff]``); empty for None."""
    return _text(value).replace(":", "").split("+")[0].removesuffix("Z")
