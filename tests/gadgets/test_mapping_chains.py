"""The mapping chains end to end: simulated raw file -> replay -> T1/T2 maps and SD maps against the truth."""

import typing
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pydicom
import pytest

from gadgets.cli import main
from gadgets.evaluate import read_series, score_maps
from gadgets.fitting import ModelName
from gadgets.runtime.chain import parse_chain, resolve_chain
from gadgets.runtime.client import send_stream
from gadgets.runtime.replay import replay
from gadgets.runtime.server import MrdServer
from qmri_models.signal_models import MODELS
from qmri_models.simulation.anatomy import NIST_T1_MS
from tests.conftest import dciodvfy_lines, free_port, make_raw, pynetdicom_refused_socket, raw_header_and_items


def meta_of(image: ismrmrd.Image) -> dict[str, str]:
    return dict(ismrmrd.Meta.deserialize(image.attribute_string))


def test_chain_model_choices_are_the_signal_models() -> None:
    assert set(typing.get_args(ModelName)) == set(MODELS)


@pytest.mark.parametrize(
    ("contrast", "chain", "role", "limit_percent"),
    [("molli", "t1_molli", "T1", 3.0), ("t2prep", "t2prep", "T2", 5.0)],
)
def test_fully_sampled_maps_match_truth_in_white_and_grey_matter(
    tmp_path: Path, contrast: str, chain: str, role: str, limit_percent: float
) -> None:
    """Default SNR (50), fully sampled: median error within 3% (T1) / 5% (T2) in white and grey matter."""
    raw = make_raw(tmp_path / f"{contrast}.h5", contrast=contrast, matrix=96, seed=11)
    out = tmp_path / "out"
    replay(raw, resolve_chain(chain), out, progress=False)
    (entry,) = score_maps(out, raw)
    assert entry.map_name == role
    scores = {t.tissue: t for t in entry.tissues}
    for tissue in ("white_matter", "grey_matter"):
        assert scores[tissue].median_ape_percent < limit_percent, scores[tissue]
        assert scores[tissue].ssim > 0.8
    maps, images = read_series(out / "images.h5", 11)
    sds, sd_images = read_series(out / "images.h5", 12)
    meta, sd_meta = meta_of(images[0]), meta_of(sd_images[0])
    assert meta["GADGETRON_DataRole"] == role
    assert sd_meta["GADGETRON_DataRole"] == f"{role}SD"
    assert meta["DataRole"] == sd_meta["DataRole"] == "Quantitative"
    assert meta["Units"] == "ms"
    assert float(meta["GADGETRON_WindowWidth"]) > 0
    assert maps.dtype == np.float32
    with h5py.File(raw, "r") as f:
        truth_ms = f["truth"]["t1_ms" if role == "T1" else "t2_ms"][0]
        labels = f["truth"]["labels"][0]
    wm = labels == 1
    # the SD map is in ms and of the size of the fit's scatter in white matter
    scatter = np.std(maps[0][wm] - truth_ms[wm])
    assert 0.5 < np.median(sds[0][wm]) / scatter < 2.0
    # the chain's DICOM: one Parametric Map per series, values in ms exactly as the MRD map, valid for dciodvfy
    for series, values, kind in ((11, maps[0], "map"), (12, sds[0], "uncertainty")):
        (path,) = (out / "dicom").glob(f"*/series_{series:04d}/*.dcm")
        dataset = pydicom.dcmread(path)
        assert dataset.SeriesNumber == series
        assert kind in dataset.SeriesDescription
        np.testing.assert_array_equal(dataset.pixel_array, values)
        mapping = dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
        assert not [line for line in dciodvfy_lines(path) if line.startswith("Error")]


def test_undersampled_molli_returns_maps_and_phase_images_when_asked(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "r4.h5", contrast="molli", acceleration=4, acs_fraction=0.16, n_coils=8, n_slices=2)
    text = Path(resolve_chain("t1_molli").source).read_text()
    chain = parse_chain(text.replace('name="send_phase_images" value="false"', 'name="send_phase_images" value="true"'))
    out = tmp_path / "out"
    replay(raw, chain, out, progress=False)
    phases, _ = read_series(out / "images.h5", 1)
    maps, images = read_series(out / "images.h5", 11)
    assert phases.shape == (16, 64, 64)
    assert maps.shape == (2, 64, 64)
    assert sorted(int(im.slice) for im in images) == [0, 1]
    entries = score_maps(out, raw)
    wm = {e.slice: next(t for t in e.tissues if t.tissue == "white_matter") for e in entries}
    assert all(w.median_ape_percent < 15.0 for w in wm.values()), wm


def test_nist_phantom_inversion_recovery_within_3_percent(tmp_path: Path) -> None:
    """qMRI Diffusor protocol (TIs 50-2500 ms), NIST spheres (its Table 1), SNR 100: sphere means within 3%."""
    raw = make_raw(tmp_path / "ir.h5", contrast="ir", phantom="spheres", matrix=96, snr=100.0, seed=4)
    out = tmp_path / "out"
    replay(raw, resolve_chain("t1_ir"), out, progress=False)
    maps, _ = read_series(out / "images.h5", 11)
    with h5py.File(raw, "r") as f:
        labels = f["truth"]["labels"][0]
        names = [str(n) for n in f["truth"].attrs["label_names"]]
    checked = 0
    for index, t1_ms in enumerate(NIST_T1_MS):
        if not 241 <= t1_ms <= 1884:
            continue
        pixels = labels == names.index(f"sphere_{index + 1:02d}")
        assert abs(maps[0][pixels].mean() / t1_ms - 1.0) < 0.03, f"sphere {t1_ms} ms: {maps[0][pixels].mean():.1f}"
        checked += 1
    assert checked == 7


def test_evaluate_command_prints_per_tissue_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = make_raw(tmp_path / "t2.h5", contrast="t2prep", seed=2)
    out = tmp_path / "out"
    replay(raw, resolve_chain("t2prep"), out, progress=False)
    assert main(["evaluate", str(out), str(raw)]) == 0
    printed = capsys.readouterr().out
    assert "T2 map (series 11) against the truth" in printed
    for header in ("median APE %", "MAPE %", "NRMSE", "SSIM", "white_matter", "grey_matter"):
        assert header in printed


@pynetdicom_refused_socket
def test_server_returns_maps_and_sd_while_the_dicom_node_is_down(tmp_path: Path) -> None:
    """The scanner path: a MOLLI stream to `qmri serve` comes back as T1 and T1SD images even though the DICOM node
    the chain names is down; the client gets a WARNING text and the DICOM files wait in the outbox."""
    raw = make_raw(tmp_path / "molli.h5", contrast="molli", seed=5)
    chain_text = Path(resolve_chain("t1_molli").source).read_text()
    chain_text = chain_text.replace(
        '<property name="node_host" value=""/>',
        f'<property name="node_host" value="127.0.0.1"/><property name="node_port" value="{free_port()}"/>',
    )
    output = tmp_path / "server_output"
    server = MrdServer("127.0.0.1", 0, output_dir=output)
    server.start_in_background()
    try:
        header, items = raw_header_and_items(raw)
        reply = send_stream("127.0.0.1", server.port, header, items, config_text=chain_text)
    finally:
        server.shutdown()
        server.server_close()
    assert not reply.errors
    (warning,) = [text for text in reply.texts if text.startswith("WARNING")]
    assert "qmri dicom-flush" in warning
    assert len(list((output / "dicom_outbox").glob("*.dcm"))) == 2
    roles = sorted(meta_of(image)["GADGETRON_DataRole"] for image in reply.images)
    assert roles == ["T1", "T1SD"]
    t1 = next(image for image in reply.images if meta_of(image)["GADGETRON_DataRole"] == "T1")
    assert t1.image_series_index == 11
    assert t1.data.dtype == np.float32
    with h5py.File(raw, "r") as f:
        truth = f["truth"]["t1_ms"][0]
        labels = f["truth"]["labels"][0]
    wm = labels == 1
    assert abs(np.median(t1.data[0, 0][wm] / truth[wm]) - 1.0) < 0.03
    assert len(list((output / "dicom").glob("*/series_*/*.dcm"))) == 2


def test_map_series_properties_move_series_and_window(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "t2.h5", contrast="t2prep", seed=8)
    text = Path(resolve_chain("t2prep").source).read_text()
    text = text.replace('name="map_series_index" value="11"', 'name="map_series_index" value="21"')
    text = text.replace(
        '<property name="sd_series_index" value="12"/>',
        '<property name="send_sd" value="false"/><property name="window_center" value="60"/>'
        '<property name="window_width" value="120"/>',
    )
    out = tmp_path / "out"
    replay(raw, parse_chain(text), out, progress=False)
    with ismrmrd.Dataset(str(out / "images.h5"), "dataset", create_if_needed=False) as dataset:
        assert sorted(dataset.list()) == ["image_21", "xml"]
    _, images = read_series(out / "images.h5", 21)
    meta = meta_of(images[0])
    assert (meta["GADGETRON_WindowCenter"], meta["GADGETRON_WindowWidth"]) == ("60", "120")
