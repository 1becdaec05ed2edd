"""The mapping chains end to end: simulated raw file -> replay -> T1/T2 maps and SD maps against the truth."""

import json
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pydicom
import pytest
from PIL import Image

from gadgets.cli import main
from gadgets.evaluate import read_series, score_maps
from gadgets.fitting import ParameterFitConfig
from gadgets.preview import to_uint8
from gadgets.puq_fit import PuqFitConfig
from gadgets.runtime.chain import load_chain, resolve_chain, shipped_chains
from gadgets.runtime.client import send_stream
from gadgets.runtime.replay import replay
from gadgets.runtime.server import MrdServer
from gadgets.runtime.session import SiteSettings
from gadgets.windowing import percentile_window
from qmri_models.fitting.maps import MASK_THRESHOLD, MIN_ISLAND_PIXELS, fit_mask, signal_mask
from qmri_models.fitting.plausibility import MAX_T1_MS
from qmri_models.protocols import PROTOCOLS
from qmri_models.simulation.anatomy import NIST_T1_MS
from tests.chain_variants import chain_variant, variant_text
from tests.conftest import dciodvfy_lines, free_port, make_raw, pynetdicom_refused_socket, raw_header_and_items

pytestmark = pytest.mark.slow


def meta_of(image: ismrmrd.Image) -> dict[str, str]:
    return dict(ismrmrd.Meta.deserialize(image.attribute_string))


def edges_of(window: tuple[float, float]) -> tuple[float, float]:
    """Return the lowest and highest value a ``(centre, width)`` window shows."""
    return window[0] - window[1] / 2, window[0] + window[1] / 2


def stored_window(image: ismrmrd.Image) -> tuple[float, float]:
    """Return an image's stored ``(centre, width)``, compared with a computed one at the 6 digits the meta keeps."""
    meta = meta_of(image)
    return pytest.approx((float(meta["GADGETRON_WindowCenter"]), float(meta["GADGETRON_WindowWidth"])), rel=1e-5)


def window_edges(image: ismrmrd.Image) -> tuple[float, float]:
    meta = meta_of(image)
    return edges_of((float(meta["GADGETRON_WindowCenter"]), float(meta["GADGETRON_WindowWidth"])))


@pytest.fixture(scope="module")
def molli_replay(molli_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 64^2 4x MOLLI scan (two slices) through t1_molli, phase images sent too; the output folder."""
    out = tmp_path_factory.mktemp("molli_replay")
    replay(molli_raw, chain_variant("t1_molli", "Fit", send_phase_images="true"), out, progress=False)
    return out


def test_fit_model_choices_are_the_protocols_and_each_has_a_shipped_chain() -> None:
    """`qmri gadgets` and `check-chain` list the protocols as the fits' choices; a shipped chain fits each one."""
    for config in (ParameterFitConfig, PuqFitConfig):
        (model,) = [p for p in config.describe() if p.name == "model"]
        assert model.type_name.split("|") == list(PROTOCOLS)
    fitted = {
        stage.properties.get("model")
        for path in shipped_chains().values()
        for stage in load_chain(path).stages
        if stage.spec.classname == "ParameterFitGadget"
    }
    assert fitted == set(PROTOCOLS)


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


def test_undersampled_molli_returns_maps_and_phase_images_when_asked(molli_replay: Path, molli_raw: Path) -> None:
    phases, _ = read_series(molli_replay / "images.h5", 1)
    maps, images = read_series(molli_replay / "images.h5", 11)
    assert phases.shape == (16, 64, 64)
    assert maps.shape == (2, 64, 64)
    assert sorted(int(im.slice) for im in images) == [0, 1]
    entries = score_maps(molli_replay, molli_raw)
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
    site_chains = tmp_path / "site_chains"  # a DICOM node is the site's to name, in a chain the client names
    site_chains.mkdir()
    node = {"node_host": "127.0.0.1", "node_port": str(free_port())}
    (site_chains / "t1_molli_node.xml").write_text(variant_text("t1_molli", "Dicom", **node))
    output = tmp_path / "server_output"
    server = MrdServer("127.0.0.1", 0, site=SiteSettings(output_dir=output, site_chains=site_chains))
    server.start_in_background()
    try:
        header, items = raw_header_and_items(raw)
        reply = send_stream("127.0.0.1", server.port, header, items, config_file="t1_molli_node")
    finally:
        server.shutdown()
        server.server_close()
    assert not reply.errors
    (warning,) = [text for text in reply.texts if text.startswith("WARNING")]
    assert "qmri dicom-flush" in warning
    assert len(list((output / "dicom_outbox").glob("*.dcm"))) == 5  # map, SD, the interval's bounds, the SR
    roles = sorted(meta_of(image)["GADGETRON_DataRole"] for image in reply.images)
    assert roles == ["T1", "T1Lower", "T1SD", "T1Upper"]
    t1 = next(image for image in reply.images if meta_of(image)["GADGETRON_DataRole"] == "T1")
    assert t1.image_series_index == 11
    assert t1.data.dtype == np.float32
    with h5py.File(raw, "r") as f:
        truth = f["truth"]["t1_ms"][0]
        labels = f["truth"]["labels"][0]
    wm = labels == 1
    assert abs(np.median(t1.data[0, 0][wm] / truth[wm]) - 1.0) < 0.03
    assert len(list((output / "dicom").glob("*/series_*/*.dcm"))) == 5
    (report,) = [text for text in reply.texts if text.startswith("{")]
    assert json.loads(report)["type"] == "qmri.structure_report"


def test_map_series_properties_move_series_and_window(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "t2.h5", contrast="t2prep", seed=8)
    chain = chain_variant("t2prep", "Maps", map_series_index=31, send_sd="false", window_center=60, window_width=120)
    out = tmp_path / "out"
    replay(raw, chain, out, progress=False)
    with ismrmrd.Dataset(str(out / "images.h5"), "dataset", create_if_needed=False) as dataset:
        assert sorted(dataset.list()) == ["image_21", "image_22", "image_31", "xml"]  # the bounds stay at 21, 22
    _, images = read_series(out / "images.h5", 31)
    meta = meta_of(images[0])
    assert (meta["GADGETRON_WindowCenter"], meta["GADGETRON_WindowWidth"]) == ("60", "120")


def test_undersampled_molli_map_is_plausible_zero_outside_the_mask_and_windowed_on_tissue(
    molli_replay: Path, molli_raw: Path
) -> None:
    """4x MOLLI at 64^2 fits noise and aliasing at the head's edge (before the plausibility step: T1 from -4400 ms to
    7e7 ms, SD to 1e12 ms, windows of 1e7 ms): no T1 above 5000 ms or below 0, zero outside the fit mask, rejected
    pixels 0 with SD 5000 ms, and the windows of map and SD inside [0, 5000] ms, the map's over the kept pixels."""
    phases, phase_images = read_series(molli_replay / "images.h5", 1)
    maps, images = read_series(molli_replay / "images.h5", 11)
    sds, sd_images = read_series(molli_replay / "images.h5", 12)
    with h5py.File(molli_raw, "r") as f:
        truth = f["truth"]["t1_ms"][:]
        labels = f["truth"]["labels"][:]
    slices = np.array([int(im.slice) for im in phase_images])
    n_rejected = 0
    for s, (t1, sd, image, sd_image) in enumerate(zip(maps, sds, images, sd_images, strict=True)):
        assert int(image.slice) == s
        mask = fit_mask(phases[slices == s], MASK_THRESHOLD, MIN_ISLAND_PIXELS)
        assert 0.0 <= t1.min() <= t1.max() <= MAX_T1_MS
        assert 0.0 <= sd.min() <= sd.max() <= MAX_T1_MS
        assert not t1[~mask].any()
        assert not sd[~mask].any()
        rejected, kept = mask & (t1 == 0), mask & (t1 > 0)
        n_rejected += int(rejected.sum())
        np.testing.assert_array_equal(sd[rejected], MAX_T1_MS)
        assert (sd[kept] > 0).all()
        for edges in (window_edges(image), window_edges(sd_image)):
            assert 0.0 <= edges[0] < edges[1] <= MAX_T1_MS
        assert stored_window(image) == percentile_window(t1[kept], minimum=0.0, maximum=MAX_T1_MS)
        low, high = window_edges(image)
        assert low < np.median(truth[s][labels[s] == 1]) < np.median(truth[s][labels[s] == 2]) < high
        assert "5000 ms marks a pixel whose T1 was rejected" in meta_of(sd_image)["GADGETRON_ImageComment"]
    assert n_rejected > 0  # the scan has implausible fits (644 on these two slices): the checks above bite


def test_phase_images_are_windowed_on_the_signal_not_the_background(molli_replay: Path) -> None:
    phases, phase_images = read_series(molli_replay / "images.h5", 1)
    slices = np.array([int(im.slice) for im in phase_images])
    for s in (0, 1):
        magnitude = phases[slices == s]
        signal = signal_mask(magnitude, MASK_THRESHOLD)
        first = next(im for im in phase_images if int(im.slice) == s)
        assert stored_window(first) == percentile_window(magnitude[:, signal], minimum=0.0)
        assert np.percentile(magnitude, 1) == 0.0  # the background is zero...
        assert window_edges(first)[0] > 0.0  # ...and does not pull the window down


def test_demo_like_t1_png_looks_like_the_truth(molli_replay: Path, molli_raw: Path, tmp_path: Path) -> None:
    """`qmri preview` of the 4x MOLLI T1 map against the truth rendered in the same stored window: Pearson r of the
    gray levels in the brain above 0.7 (measured 0.80 and 0.84 on the two slices; 0.81 on the 160^2 `make demo`;
    before the plausibility step the stored window made the truth one gray level), background black."""
    with h5py.File(molli_raw, "r") as f:
        truth = f["truth"]["t1_ms"][:]
        labels = f["truth"]["labels"][:]
        names = [str(n) for n in f["truth"].attrs["label_names"]]
    brain_labels = [names.index(n) for n in ("white_matter", "grey_matter", "csf", "lesion") if n in names]
    _, images = read_series(molli_replay / "images.h5", 11)
    sds, _ = read_series(molli_replay / "images.h5", 12)
    for s in (0, 1):
        png = tmp_path / f"t1_{s}.png"
        assert (
            main(["preview", str(molli_replay / "images.h5"), "--series", "11", "--slice", str(s), "--out", str(png)])
            == 0
        )
        gray = np.asarray(Image.open(png))
        assert gray.dtype == np.uint8
        assert gray.shape == truth[s].shape
        low, high = window_edges(images[s])
        truth_gray = to_uint8(truth[s], (low + high) / 2, high - low)
        brain = np.isin(labels[s], brain_labels)
        r = np.corrcoef(gray[brain].astype(float), truth_gray[brain].astype(float))[0, 1]
        assert r > 0.7, (s, r)
        assert not gray[sds[s] == 0].any()  # outside the fit mask
        assert np.median(gray[labels[s] == 0]) == 0


def test_fit_properties_set_the_maximum_and_the_window_follows(molli_raw: Path, tmp_path: Path) -> None:
    chain = chain_variant("t1_molli", "Fit", max_t1_ms="1500", min_island_pixels="1")
    out = tmp_path / "out"
    replay(molli_raw, chain, out, progress=False)
    maps, images = read_series(out / "images.h5", 11)
    sds, sd_images = read_series(out / "images.h5", 12)
    assert maps.max() <= 1500.0
    assert sds.max() == 1500.0
    assert ((maps > 0) & (maps < 1500.0)).sum() > 1000  # white and grey matter are kept
    for image in (*images, *sd_images):
        assert 0.0 <= window_edges(image)[0] < window_edges(image)[1] <= 1500.0
    assert "outside 0-1500 ms" in meta_of(images[0])["GADGETRON_ImageComment"]
