"""DICOM output: valid files (dciodvfy), exact map values, one series per image series, geometry, pass-through."""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import ismrmrd
import numpy as np
import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from gadgets.dicom.files import DicomSeriesWriter, quantise_uint16
from gadgets.dicom_output import DicomOutputConfig
from gadgets.evaluate import read_series
from gadgets.runtime.chain import load_chain, parse_chain
from gadgets.runtime.config import PropertyError
from gadgets.runtime.pipeline import run_chain
from gadgets.runtime.replay import replay
from qmri_models.protocols import SATURATION, T2PREP, Preparation
from tests.conftest import dciodvfy_lines, free_port, make_raw, pynetdicom_refused_socket, raw_header_and_items

RECON_XML = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <version>2</version>
  <stream>
    <gadget><name>Buffer</name><dll>qmri</dll><classname>AcquisitionBufferGadget</classname></gadget>
    <gadget>
      <name>Recon</name><dll>qmri</dll><classname>CartesianReconGadget</classname>
      <property name="method" value="zero_filled"/>
      <property name="coil_combine" value="sos"/>
    </gadget>
    <gadget><name>PhaseImages</name><dll>qmri</dll><classname>ImageSeriesGadget</classname></gadget>
    <gadget><name>Dicom</name><dll>qmri</dll><classname>DicomOutputGadget</classname></gadget>
  </stream>
</configuration>
"""


def dicom_chain(**properties: object):
    """A site chain (its properties name folders and nodes) of DicomOutputGadget alone, with the given properties."""
    props = "".join(f'<property name="{name}" value="{value}"/>' for name, value in properties.items())
    return parse_chain(
        "<configuration><version>2</version><stream><gadget><name>Dicom</name><dll>qmri</dll>"
        f"<classname>DicomOutputGadget</classname>{props}</gadget></stream></configuration>",
        site=True,
    )


def map_image(like: ismrmrd.Image, values: np.ndarray, series: int, role: str) -> ismrmrd.Image:
    """A float32 map image on the plane of ``like``, with the map meta contract (DataRole=Quantitative, Units=ms)."""
    image = ismrmrd.Image.from_array(values.astype(np.float32), transpose=False)
    image.image_type = ismrmrd.IMTYPE_MAGNITUDE
    image.image_series_index = series
    image.image_index = like.slice + 1
    image.slice = like.slice
    for name in ("position", "read_dir", "phase_dir", "slice_dir", "field_of_view"):
        getattr(image, name)[:] = getattr(like, name)[:]
    meta = ismrmrd.Meta(
        {
            "GADGETRON_DataRole": role,
            "DataRole": "Quantitative",
            "Units": "ms",
            "GADGETRON_SeqDescription": f"_{role}_MAP",
            "GADGETRON_ImageComment": f"{role} test map",
            "GADGETRON_WindowCenter": "1200",
            "GADGETRON_WindowWidth": "1600",
        }
    )
    image.attribute_string = meta.serialize()
    return image


def first_pixel_mm(image: ismrmrd.Image) -> np.ndarray:
    """Centre of the first pixel, computed here from the ismrmrd header."""
    n_y, n_x = image.data.shape[-2:]
    fov = np.asarray(image.field_of_view, dtype=float)
    return (
        np.asarray(image.position, dtype=float)
        - (n_x - 1) / 2 * fov[0] / n_x * np.asarray(image.read_dir, dtype=float)
        - (n_y - 1) / 2 * fov[1] / n_y * np.asarray(image.phase_dir, dtype=float)
    )


def snapshot(item: object) -> object:
    """What an item is on the wire: header bytes, meta and data of an image; the item itself otherwise."""
    if isinstance(item, ismrmrd.Image):
        return bytes(item.getHead()), item.attribute_string, item.data.copy()
    return item


@dataclass
class Stream:
    header: ismrmrd.xsd.ismrmrdHeader
    phases: list[ismrmrd.Image]
    maps: dict[tuple[int, int], ismrmrd.Image]
    """Map images by (series, slice)."""
    inputs: list[object]
    outputs: list[object]
    snapshots: list[object]
    files: list[Path]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-slice MOLLI scan replayed through a recon chain ending in DicomOutputGadget: (raw, out_dir)."""
    tmp = tmp_path_factory.mktemp("dicom_replay")
    raw = make_raw(tmp / "molli.h5", contrast="molli", acceleration=1, n_slices=2, seed=5)
    chain_file = tmp / "recon_dicom.xml"
    chain_file.write_text(RECON_XML)
    replay(raw, load_chain(chain_file), tmp / "out", progress=False)
    return raw, tmp / "out"


@pytest.fixture(scope="module")
def stream(replayed: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Stream:
    """The replay's phase images, each slice followed by its T1 (11) and T1SD (12) maps, through DicomOutputGadget."""
    raw, out = replayed
    header, _ = raw_header_and_items(raw)
    _, phases = read_series(out / "images.h5", 1)
    rng = np.random.default_rng(7)
    maps: dict[tuple[int, int], ismrmrd.Image] = {}
    inputs: list[object] = ["text before the images"]
    for slice_index in sorted({im.slice for im in phases}):
        slice_phases = [im for im in phases if im.slice == slice_index]
        inputs += slice_phases
        t1 = rng.uniform(200.0, 2500.0, size=(64, 64)).astype(np.float32)
        t1[0, :3] = [0.0, np.float32(1234.5678), np.nextafter(np.float32(1000), np.float32(2000))]
        sd = (t1 * rng.uniform(0.01, 0.1, size=t1.shape)).astype(np.float32)
        maps[11, slice_index] = map_image(slice_phases[0], t1, 11, "T1")
        maps[12, slice_index] = map_image(slice_phases[0], sd, 12, "T1SD")
        inputs += [maps[11, slice_index], maps[12, slice_index]]
    snapshots = [snapshot(item) for item in inputs]
    outputs: list[object] = []
    folder = tmp_path_factory.mktemp("dicom_stream")
    run_chain(dicom_chain(), header, iter(inputs), outputs.append, output_dir=folder)
    files = sorted((folder / "dicom").rglob("*.dcm"))
    return Stream(header, phases, maps, inputs, outputs, snapshots, files)


def read_all(files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in files]


def test_replay_through_a_chain_writes_one_valid_mr_file_per_phase_image(replayed: tuple[Path, Path]) -> None:
    _, out = replayed
    files = sorted((out / "dicom").rglob("*.dcm"))
    _, phases = read_series(out / "images.h5", 1)
    assert len(files) == len(phases) == 16
    for path in files:
        errors = [line for line in dciodvfy_lines(path) if "Error" in line]
        assert errors == [], path
    assert {pydicom.dcmread(f).SOPClassUID for f in files} == {pydicom.uid.MRImageStorage}


def test_every_file_passes_dciodvfy(stream: Stream) -> None:
    assert len(stream.files) == 16 + 4
    warnings = set()
    for path in stream.files:
        lines = dciodvfy_lines(path)
        assert [line for line in lines if "Error" in line] == [], path
        warnings.update(lines)
    # the simulator's header has no study date/time nor body part; nothing else is worth a warning
    assert len(warnings) <= 3, warnings


def test_gadget_passes_every_item_through_unchanged(stream: Stream) -> None:
    assert len(stream.outputs) == len(stream.inputs)
    for sent, received, before in zip(stream.inputs, stream.outputs, stream.snapshots, strict=True):
        assert received is sent
        after = snapshot(received)
        if isinstance(sent, ismrmrd.Image):
            assert after[:2] == before[:2]  # type: ignore[index]
            np.testing.assert_array_equal(after[2], before[2])  # type: ignore[index]
        else:
            assert after == before


def test_map_values_round_trip_exactly_with_ms_mapping(stream: Stream) -> None:
    maps = [ds for ds in read_all(stream.files) if ds.SOPClassUID == pydicom.uid.ParametricMapStorage]
    assert len(maps) == 4
    for ds in maps:
        position = np.asarray(ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient)
        (sent,) = [
            im
            for (series, _), im in stream.maps.items()
            if series == ds.SeriesNumber and np.allclose(first_pixel_mm(im), position.astype(float))
        ]
        mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
        assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
        values = ds.pixel_array * mapping.RealWorldValueSlope + mapping.RealWorldValueIntercept
        assert ds.pixel_array.dtype == np.float32
        np.testing.assert_array_equal(values.astype(np.float32), sent.data[0, 0])
        assert mapping.LUTLabel == ("T1" if ds.SeriesNumber == 11 else "T1SD")
        quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeMeaning
        assert quantity == ("T1" if ds.SeriesNumber == 11 else "Standard Deviation")
        voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
        assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (1200.0, 1600.0)


def test_phase_images_round_trip_within_the_stated_quantisation(stream: Stream) -> None:
    mr = [ds for ds in read_all(stream.files) if ds.SOPClassUID == pydicom.uid.MRImageStorage]
    assert len(mr) == 16
    by_position_and_prep = {(tuple(np.round(first_pixel_mm(im), 3)), im.set): im.data[0, 0] for im in stream.phases}
    for ds in mr:
        mapping = ds.RealWorldValueMappingSequence[0]
        slope, intercept = mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept
        values = ds.pixel_array * slope + intercept
        key = tuple(np.round(np.asarray(ds.ImagePositionPatient, dtype=float), 3))
        phase = int(ds.ImageComments.split()[1])  # "phase <p> prep <t> ms"
        sent = by_position_and_prep[key, phase]
        assert slope == pytest.approx(sent.max() / 65535)
        assert np.max(np.abs(values - sent)) <= slope / 2 * (1 + 1e-6)


def test_quantise_keeps_unsigned_integers_and_bounds_the_error_of_floats() -> None:
    integers = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    stored, slope, intercept = quantise_uint16(integers)
    np.testing.assert_array_equal(stored, integers)
    assert (slope, intercept) == (1.0, 0.0)
    floats = np.random.default_rng(1).normal(size=(8, 8)) * 1e3
    stored, slope, intercept = quantise_uint16(floats)
    assert intercept == floats.min() < 0
    assert np.max(np.abs(stored * slope + intercept - floats)) <= slope / 2 * (1 + 1e-9)


def test_one_series_per_image_series_one_study_patient_from_header(stream: Stream) -> None:
    datasets = read_all(stream.files)
    series_uids: dict[int, set[str]] = {}
    for ds in datasets:
        series_uids.setdefault(int(ds.SeriesNumber), set()).add(ds.SeriesInstanceUID)
    assert sorted(series_uids) == [1, 11, 12]
    assert all(len(uids) == 1 for uids in series_uids.values())
    assert len(set.union(*series_uids.values())) == 3
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    subject = stream.header.subjectInformation
    assert {ds.PatientID for ds in datasets} == {subject.patientID}
    assert {str(ds.PatientName) for ds in datasets} == {subject.patientName}
    descriptions = {int(ds.SeriesNumber): ds.SeriesDescription for ds in datasets}
    assert "T1 map [ms]" in descriptions[11]
    assert "T1 uncertainty SD [ms]" in descriptions[12]
    assert "map" not in descriptions[1].lower()


def test_a_second_reconstruction_shares_the_study_not_the_series(stream: Stream, tmp_path: Path) -> None:
    first = DicomSeriesWriter(stream.header, tmp_path / "a")
    second = DicomSeriesWriter(stream.header, tmp_path / "b")
    image = stream.maps[11, 0]
    (a,), (b,) = first.write(image), second.write(image)
    one, two = pydicom.dcmread(a), pydicom.dcmread(b)
    assert one.StudyInstanceUID == two.StudyInstanceUID == read_all(stream.files[:1])[0].StudyInstanceUID
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID
    assert one.SeriesInstanceUID != two.SeriesInstanceUID
    assert one.SOPInstanceUID != two.SOPInstanceUID


def test_uids_given_in_the_header_are_used(stream: Stream, tmp_path: Path) -> None:
    header = copy_header(stream.header)
    header.studyInformation = replace(header.studyInformation, studyInstanceUID="1.2.3.4.5")
    header.measurementInformation = replace(
        header.measurementInformation, frameOfReferenceUID="1.2.3.4.6", seriesInstanceUIDRoot="1.2.3.4.7"
    )
    (path,) = DicomSeriesWriter(header, tmp_path).write(stream.maps[11, 1])
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == "1.2.3.4.5"
    assert ds.FrameOfReferenceUID == "1.2.3.4.6"
    assert ds.SeriesInstanceUID.startswith("1.2.3.4.7.")


def copy_header(header: ismrmrd.xsd.ismrmrdHeader) -> ismrmrd.xsd.ismrmrdHeader:
    return ismrmrd.xsd.CreateFromDocument(header.toXML().encode())


def test_geometry_matches_the_ismrmrd_image_header(stream: Stream) -> None:
    for ds in read_all(stream.files):
        if ds.SOPClassUID == pydicom.uid.MRImageStorage:
            position = np.asarray(ds.ImagePositionPatient, dtype=float)
            orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
            spacing = np.asarray(ds.PixelSpacing, dtype=float)
            thickness = float(ds.SliceThickness)
            candidates = stream.phases
        else:
            frame = ds.PerFrameFunctionalGroupsSequence[0]
            shared = ds.SharedFunctionalGroupsSequence[0]
            position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
            orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
            spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
            thickness = float(shared.PixelMeasuresSequence[0].SliceThickness)
            candidates = [im for (series, _), im in stream.maps.items() if series == ds.SeriesNumber]
        on_plane = [im for im in candidates if np.allclose(first_pixel_mm(im), position, atol=1e-4)]
        assert on_plane, position
        image = on_plane[0]
        fov = np.asarray(image.field_of_view, dtype=float)
        np.testing.assert_allclose(orientation, [*image.read_dir, *image.phase_dir], atol=1e-6)
        np.testing.assert_allclose(spacing, [fov[1] / ds.Rows, fov[0] / ds.Columns], rtol=1e-6)
        assert thickness == pytest.approx(fov[2])
        assert (ds.Rows, ds.Columns) == image.data.shape[-2:]
    # the two slices lie at different places along the slice normal
    assert len({round(float(ds.SliceLocation), 3) for ds in read_all(stream.files) if "SliceLocation" in ds}) == 2


def test_maps_reference_the_phase_images_written_before_them(stream: Stream) -> None:
    datasets = read_all(stream.files)
    phases = [ds for ds in datasets if ds.SeriesNumber == 1]
    for ds in (d for d in datasets if d.SOPClassUID == pydicom.uid.ParametricMapStorage):
        position = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
        same_plane = {p.SOPInstanceUID for p in phases if np.allclose(p.ImagePositionPatient, position)}
        assert len(same_plane) == 8
        assert {ref.ReferencedSOPInstanceUID for ref in ds.SourceImageSequence} == same_plane
        (referenced,) = ds.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == phases[0].SeriesInstanceUID


def test_maps_without_source_images_have_no_dangling_references(stream: Stream, tmp_path: Path) -> None:
    writer = DicomSeriesWriter(stream.header, tmp_path)
    paths = [path for image in stream.maps.values() for path in writer.write(image)]
    assert len(paths) == 4
    for path in paths:
        ds = pydicom.dcmread(path)
        assert "SourceImageSequence" not in ds
        assert "ReferencedSeriesSequence" not in ds
        groups = [*ds.SharedFunctionalGroupsSequence, *ds.PerFrameFunctionalGroupsSequence]
        assert all("DerivationImageSequence" not in group for group in groups)
        assert [line for line in dciodvfy_lines(path) if "Error" in line] == []


def test_inversion_time_only_on_images_with_a_prep_time(stream: Stream, tmp_path: Path) -> None:
    writer = DicomSeriesWriter(stream.header, tmp_path)  # MOLLI: the protocol's prep times are inversion times
    plain = ismrmrd.Image.from_array(stream.phases[0].data.copy(), transpose=False)
    for name in ("position", "read_dir", "phase_dir", "slice_dir", "field_of_view"):
        getattr(plain, name)[:] = getattr(stream.phases[0], name)[:]
    (with_prep,), (without,) = writer.write(stream.phases[3]), writer.write(plain)
    first, second = pydicom.dcmread(with_prep), pydicom.dcmread(without)
    assert list(first.ScanningSequence) == ["IR", "RM"]
    assert first.SequenceVariant == "MP"
    assert float(first.InversionTime) == float(
        ismrmrd.Meta.deserialize(stream.phases[3].attribute_string)["PrepTime_ms"]
    )
    assert second.ScanningSequence == "RM"
    assert second.SequenceVariant == "NONE"
    assert second.SeriesNumber == 1000  # image_series_index 0 (unset): DICOM series numbers start at 1
    assert "InversionTime" not in second


@pytest.mark.parametrize("preparation", [T2PREP, SATURATION], ids=lambda p: p.name)
def test_prep_times_in_a_user_parameter_list_are_not_labelled_inversion(
    stream: Stream, tmp_path: Path, preparation: Preparation
) -> None:
    """The same phase image under a header that keeps its times in the preparation's list (no TI): magnetisation
    prepared (MP), no IR and no Inversion Time."""
    header = copy_header(stream.header)
    times = list(header.sequenceParameters.TI)
    header.sequenceParameters = replace(header.sequenceParameters, TI=[])
    lists = [ismrmrd.xsd.userParameterDoubleType(name=preparation.user_parameter, value=t) for t in times]
    header.userParameters = ismrmrd.xsd.userParametersType(userParameterDouble=lists)
    (path,) = DicomSeriesWriter(header, tmp_path).write(stream.phases[3])
    ds = pydicom.dcmread(path)
    assert ds.ScanningSequence == "RM"
    assert ds.SequenceVariant == "MP"
    assert "InversionTime" not in ds
    assert not [line for line in dciodvfy_lines(path) if "Error" in line]


def test_multichannel_images_are_refused_with_the_channel_count(stream: Stream, tmp_path: Path) -> None:
    image = ismrmrd.Image.from_array(np.ones((2, 1, 8, 8), np.float32), transpose=False)
    with pytest.raises(ValueError, match="2 channels"):
        DicomSeriesWriter(stream.header, tmp_path).write(image)


def run_gadget(stream: Stream, out: Path, **properties: object) -> list[object]:
    outputs: list[object] = []
    run_chain(dicom_chain(**properties), stream.header, iter(stream.inputs), outputs.append, output_dir=out)
    return outputs


@pynetdicom_refused_socket
def test_node_down_keeps_files_in_outbox_and_warns_once(stream: Stream, tmp_path: Path) -> None:
    port = free_port()
    outputs = run_gadget(stream, tmp_path, node_host="127.0.0.1", node_port=port, outbox="box")
    texts = [item for item in outputs if isinstance(item, str) and item.startswith("WARNING")]
    assert len(outputs) == len(stream.inputs) + 1
    assert len(texts) == 1
    assert f"127.0.0.1:{port}" in texts[0]
    assert f"20 files kept in {tmp_path / 'box'}" in texts[0]
    assert f"qmri dicom-flush {tmp_path / 'box'}" in texts[0]
    kept = sorted(p for p in (tmp_path / "box").iterdir() if not p.name.startswith("."))
    written = sorted((tmp_path / "dicom").rglob("*.dcm"))
    assert len(kept) == len(written) == 20
    assert {pydicom.dcmread(p).SOPInstanceUID for p in kept} == {pydicom.dcmread(p).SOPInstanceUID for p in written}


@pytest.fixture
def storage_node() -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    """A C-STORE SCP on a free loopback port that keeps what it receives."""
    received: list[pydicom.Dataset] = []

    def store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="TESTSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def test_node_up_receives_every_file_and_the_outbox_empties(
    stream: Stream, tmp_path: Path, storage_node: tuple[int, list[pydicom.Dataset]]
) -> None:
    port, received = storage_node
    outputs = run_gadget(stream, tmp_path, node_host="127.0.0.1", node_port=port, called_ae="TESTSCP")
    assert not [item for item in outputs if isinstance(item, str) and item not in stream.inputs]
    written = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "dicom").rglob("*.dcm")}
    assert len(written) == 20
    assert {ds.SOPInstanceUID for ds in received} == written
    assert [p for p in (tmp_path / "dicom_outbox").iterdir() if not p.name.startswith(".")] == []


def test_bad_ae_title_is_a_property_error() -> None:
    with pytest.raises(PropertyError, match="called_ae"):
        DicomOutputConfig.from_properties({"node_host": "pacs", "called_ae": "A" * 17})
    assert DicomOutputConfig.from_properties({}).node() is None
