"""Calibrated interval bounds on the stream: MapIntervalGadget's bound images, meta, errors, wiring and DICOM."""

from dataclasses import replace
from pathlib import Path

import ismrmrd
import numpy as np
import pydicom
import pytest
import torch

from gadgets.dicom.files import DicomSeriesWriter, series_description
from gadgets.evaluate import read_series
from gadgets.image_meta import ImageMeaning, meaning_of
from gadgets.intervals import MapIntervalConfig, header_acceleration, interval_images
from gadgets.items import MapImages, SliceContext
from gadgets.output import MapSeriesConfig, map_images_to_mrd
from gadgets.runtime.chain import Chain, ChainError, parse_chain
from gadgets.runtime.pipeline import StreamError, run_chain
from gadgets.runtime.replay import replay
from gadgets.runtime.wiring import Boundary
from qmri_models.calibration.files import IntervalCalibration, save_interval_calibration
from qmri_models.calibration.out_of_distribution import OutOfDistribution
from qmri_models.calibration.risk_control import Calibration
from qmri_models.fitting.maps import SliceMaps
from qmri_models.networks.map_quantile_head import MapQuantileHead, quantile_offsets
from tests.chain_variants import variant_text, with_gadget
from tests.conftest import dciodvfy_lines, make_raw, raw_header_and_items

SCALE = 1.6180339887498949
"""The test calibration's scale at acceleration 2 (in full: the meta must carry every digit)."""


def calibration(quantity: str = "T1", scales: dict[int, float] | None = None) -> IntervalCalibration:
    """An interval calibration made in code, as `qmri calibrate` would write it."""
    evidence = {
        acceleration: Calibration(
            alpha=0.1, delta=0.05, scale=scale, bound="hoeffding_bentkus", n_items=40, risk=0.06, risk_ucb=0.095
        )
        for acceleration, scale in (scales or {2: SCALE, 4: 2.5}).items()
    }
    return IntervalCalibration(
        id=f"test_{quantity.lower()}-fit_sd-a0.1-d0.05",
        chain="t1_molli" if quantity == "T1" else "t2prep",
        quantity=quantity,  # type: ignore[arg-type]
        uncertainty="fit_sd",
        alpha=0.1,
        delta=0.05,
        bound="hoeffding_bentkus",
        scales=evidence,
        recipe={"made": "in test_intervals.py"},
        command="pytest tests/gadgets/test_intervals.py",
    )


@pytest.fixture
def t1_file(tmp_path: Path) -> Path:
    path = tmp_path / "t1_calibration.json"
    save_interval_calibration(calibration(), path)
    return path


def slice_maps(reference: ismrmrd.Acquisition | None = None) -> MapImages:
    """One 16^2 slice's T1 map and SD: some pixels unfitted, some rejected, some whose lower bound is below 0."""
    rng = np.random.default_rng(0)
    t1 = rng.uniform(200.0, 2500.0, size=(16, 16)).astype(np.float32)
    sd = (t1 * rng.uniform(0.01, 0.2, size=t1.shape)).astype(np.float32)
    sd[3, :4] = t1[3, :4]  # SD as large as the value: the lower bound would be negative
    mask = np.ones(t1.shape, bool)
    mask[0] = False
    rejected = np.zeros(t1.shape, np.uint8)
    rejected[1, :5] = 1
    t1[~mask] = 0.0
    sd[~mask] = 0.0
    t1[1, :5] = 0.0
    sd[1, :5] = 5000.0  # how the plausibility step marks a rejected pixel's SD
    maps = SliceMaps({"T1": t1}, {"T1": sd}, {"T1": "ms"}, mask, mask, rejected=rejected, maxima={"T1": 5000.0})
    refs = [reference or ismrmrd.Acquisition.from_array(np.zeros((1, 16), np.complex64))]
    return MapImages(maps, "T1", "molli", SliceContext(2, refs, (220.0, 220.0, 8.0)))


def test_bounds_are_the_map_minus_and_plus_scale_sd_on_kept_pixels() -> None:
    item = slice_maps()
    lower, upper = interval_images(item, calibration(), 2, MapIntervalConfig())
    t1, sd, kept = item.maps.values["T1"], item.maps.sds["T1"].astype(np.float64), item.maps.kept
    low, high = lower.data[0, 0], upper.data[0, 0]
    assert low.dtype == high.dtype == np.float32
    expected_low = np.where(kept, np.maximum(t1 - SCALE * sd, 0.0), 0.0)
    expected_high = np.where(kept, t1 + SCALE * sd, 0.0)
    np.testing.assert_array_equal(low, expected_low.astype(np.float32))
    np.testing.assert_array_equal(high, expected_high.astype(np.float32))
    clamped = kept & (t1 - SCALE * sd < 0)
    assert clamped.sum() == 4
    assert (low[clamped] == 0).all()
    assert (low[kept] <= t1[kept]).all()
    assert (t1[kept] <= high[kept]).all()
    assert (low[~kept] == 0).all()
    assert (high[~kept] == 0).all()  # rejected pixels' marked SD does not leak into the bounds


def test_a_calibration_with_a_quantile_head_scales_its_offsets(tmp_path: Path) -> None:
    """The bounds are the map -+ scale x the head's lower / upper offsets (``quantile_offsets``), and say so."""
    torch.manual_seed(3)
    head = MapQuantileHead(quantity="T1", alpha=0.1, hidden=4)
    weights = tmp_path / "head.pt"
    torch.save({"settings": head.settings(), "state_dict": head.state_dict(), "training": {}}, weights)
    item = slice_maps()
    lower, upper = interval_images(item, replace(calibration(), quantile_head=str(weights)), 2, MapIntervalConfig())
    t1, kept = item.maps.values["T1"], item.maps.kept
    below, above = quantile_offsets(head.eval(), t1, item.maps.sds["T1"], None, kept)
    assert not np.allclose(below[kept], above[kept])  # an asymmetric interval
    np.testing.assert_allclose(lower.data[0, 0][kept], np.maximum(t1 - SCALE * below, 0)[kept], rtol=1e-6)
    np.testing.assert_allclose(upper.data[0, 0][kept], (t1 + SCALE * above)[kept], rtol=1e-6)
    assert (upper.data[0, 0][~kept] == 0).all()
    assert "T1 + 1.618 x the quantile head's offset, 90% calibrated" in meaning_of(upper).comment


def test_bound_images_say_which_bound_of_which_interval() -> None:
    item = slice_maps()
    lower, upper = interval_images(item, calibration(), 2, MapIntervalConfig())
    (map_image, _) = map_images_to_mrd(item, MapSeriesConfig())
    for image, bound, series in ((lower, "lower", 21), (upper, "upper", 22)):
        meaning = meaning_of(image)
        assert image.image_series_index == series
        assert (image.slice, image.image_index) == (2, 3)
        assert meaning.role == f"T1{bound.title()}"
        assert meaning.quantity == "T1"
        assert meaning.is_map
        assert not meaning.is_uncertainty
        assert meaning.units == "ms"
        assert meaning.bound == bound
        assert (meaning.alpha, meaning.delta) == (0.1, 0.05)
        assert meaning.scale == SCALE
        assert meaning.calibration_id == "test_t1-fit_sd-a0.1-d0.05"
        assert meaning.sequence_description == f"_T1{bound.title()}_MAP"
        assert meaning.window == meaning_of(map_image).window  # shown like the map
        assert (
            f"T1 {bound} bound (ms) = T1 {'-' if bound == 'lower' else '+'} 1.618 x SD, 90% calibrated"
            in meaning.comment
        )
        assert "R=2" in meaning.comment
        np.testing.assert_array_equal(image.field_of_view, map_image.field_of_view)
    assert "clamped at 0" in meaning_of(lower).comment
    assert "clamped" not in meaning_of(upper).comment


def test_series_indices_are_properties() -> None:
    config = MapIntervalConfig.from_properties({"lower_series_index": "31", "upper_series_index": "32"})
    lower, upper = interval_images(slice_maps(), calibration(), 4, config)
    assert (lower.image_series_index, upper.image_series_index) == (31, 32)
    assert meaning_of(upper).scale == 2.5


def test_a_calibration_of_another_quantity_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"calibration 'test_t2-fit_sd-a0.1-d0.05' is of T2, but the molli maps are of T1"
    ):
        interval_images(slice_maps(), calibration("T2"), 2, MapIntervalConfig())


def test_maps_without_an_sd_are_refused() -> None:
    item = slice_maps()
    item.maps.sds.clear()
    with pytest.raises(ValueError, match="the molli maps have no T1 SD"):
        interval_images(item, calibration(), 2, MapIntervalConfig())


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]:
    """A 32^2 2x MOLLI scan's header and items."""
    raw = make_raw(tmp_path_factory.mktemp("tiny") / "tiny.h5", contrast="molli", acceleration=2, matrix=32, n_coils=2)
    return raw_header_and_items(raw)  # type: ignore[return-value]


def header(scan: ismrmrd.xsd.ismrmrdHeader, acceleration: int | None) -> ismrmrd.xsd.ismrmrdHeader:
    """The scan's header with ``acceleration`` along ky (None: no parallel imaging section)."""
    copy = ismrmrd.xsd.CreateFromDocument(scan.toXML().encode())
    parallel = None
    if acceleration is not None:
        factors = ismrmrd.xsd.accelerationFactorType(kspace_encoding_step_1=acceleration, kspace_encoding_step_2=1)
        parallel = replace(copy.encoding[0].parallelImaging, accelerationFactor=factors)
    copy.encoding[0] = replace(copy.encoding[0], parallelImaging=parallel)
    return copy


@pytest.mark.parametrize(("acceleration", "expected"), [(None, 1), (1, 1), (4, 4)])
def test_the_acceleration_comes_from_the_header(
    tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]], acceleration: int | None, expected: int
) -> None:
    scan, _ = tiny_scan
    assert header_acceleration(scan) == 2
    assert header_acceleration(header(scan, acceleration)) == expected


MAPS_IN = Boundary(arriving=(MapImages, str), leaving=(MapImages, ismrmrd.Image, str), peer="the test")
"""A one-gadget chain's ends: maps (and text) in, what the gadget sends out."""


def interval_gadget_chain(calibration_property: str = "", uncalibrated: str = "skip") -> Chain:
    """A site chain of MapIntervalGadget alone, with the given calibration property (none if empty)."""
    prop = f'<property name="calibration" value="{calibration_property}"/>' if calibration_property else ""
    prop += f'<property name="uncalibrated" value="{uncalibrated}"/>'
    return parse_chain(
        "<configuration><version>2</version><stream><gadget><name>Intervals</name><dll>qmri</dll>"
        f"<classname>MapIntervalGadget</classname>{prop}</gadget></stream></configuration>",
        site=True,
        boundary=MAPS_IN,
    )


def test_gadget_sends_the_bounds_then_passes_the_maps_on(
    t1_file: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    item = slice_maps()
    sent: list[object] = []
    run_chain(interval_gadget_chain(str(t1_file)), tiny_scan[0], iter(["text", item]), sent.append)
    assert sent[0] == "text"
    assert [meaning_of(image).role for image in sent[1:3]] == ["T1Lower", "T1Upper"]  # type: ignore[arg-type]
    assert sent[3] is item


def test_an_uncalibrated_acceleration_ends_the_stream_naming_the_calibrated_ones(
    t1_file: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    """With uncalibrated=error: no bound series without a guarantee, and no maps either."""
    at_3 = header(tiny_scan[0], 3)
    with pytest.raises(StreamError, match=r"no scale for acceleration 3; it was calibrated at \[2, 4\]"):
        run_chain(interval_gadget_chain(str(t1_file), "error"), at_3, iter([slice_maps()]), lambda _: None)


def test_an_uncalibrated_acceleration_keeps_the_maps_and_warns_by_default(
    t1_file: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    """A scale from another acceleration promises nothing: no bounds, the maps still flow, the client is told."""
    item = slice_maps()
    sent: list[object] = []
    run_chain(interval_gadget_chain(str(t1_file)), header(tiny_scan[0], 3), iter([item]), sent.append)
    warning, maps = sent
    assert isinstance(warning, str)
    assert warning.startswith("WARNING no interval bounds for this scan")
    assert "covers accelerations [2, 4], the scan is at 3" in warning
    assert maps is item


def test_a_missing_calibration_is_an_error(
    tmp_path: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    scan, _ = tiny_scan
    with pytest.raises(StreamError, match="no calibration file"):
        run_chain(interval_gadget_chain(str(tmp_path / "absent.json")), scan, iter([]), lambda _: None)
    with pytest.raises(StreamError, match="MapIntervalGadget needs its calibration property"):
        run_chain(interval_gadget_chain(), scan, iter([]), lambda _: None)


def test_a_client_chain_may_not_name_a_calibration_file(t1_file: Path) -> None:
    text = variant_text("t1_molli", "Intervals", calibration=t1_file)
    with pytest.raises(ChainError, match="calibration"):
        parse_chain(text)
    parse_chain(variant_text("t1_molli", "Intervals", calibration="t2prep"))  # a shipped name is a client's choice


def test_bounds_after_the_map_series_are_refused_by_the_wiring_check() -> None:
    """MapSeriesGadget turns the maps into images: nothing after it sends MapIntervalGadget any MapImages."""
    text = with_gadget("t1_molli", "MoreIntervals", "MapIntervalGadget", calibration="t1_molli")
    with pytest.raises(ChainError, match=r"MapIntervalGadget.* takes MapImages, but nothing before it sends one"):
        parse_chain(text)


def with_intervals_before_maps(chain: str, calibration_file: Path) -> Chain:
    """A site chain: a shipped chain whose MapIntervalGadget reads the given calibration file."""
    text = variant_text(chain, "Intervals", calibration=calibration_file)
    return parse_chain(text, name=f"{chain} with intervals", site=True)


@pytest.fixture(scope="module")
def molli_with_bounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2x MOLLI scan (two slices) through t1_molli with the bounds before the map series; the output folder."""
    tmp = tmp_path_factory.mktemp("intervals")
    raw = make_raw(tmp / "molli_R2.h5", contrast="molli", acceleration=2, acs_fraction=0.2, n_slices=2, seed=11)
    save_interval_calibration(calibration(), tmp / "t1.json")
    out = tmp / "out"
    replay(raw, with_intervals_before_maps("t1_molli", tmp / "t1.json"), out, progress=False)
    return out


@pytest.mark.slow
def test_a_molli_chain_streams_bounds_around_its_map(molli_with_bounds: Path) -> None:
    images_file = molli_with_bounds / "images.h5"
    t1, maps = read_series(images_file, 11)
    sd, _ = read_series(images_file, 12)
    low, lowers = read_series(images_file, 21)
    high, uppers = read_series(images_file, 22)
    assert len(maps) == len(lowers) == len(uppers) == 2
    assert [im.slice for im in lowers] == [im.slice for im in maps]
    kept = t1 > 0
    assert kept.sum() > 1000
    assert (low[kept] <= t1[kept]).all()
    assert (t1[kept] <= high[kept]).all()
    assert (low[~kept] == 0).all()
    assert (high[~kept] == 0).all()
    # the width is 2 scale SD exactly, up to the float32 rounding of each bound, where the lower bound is not clamped
    unclamped = kept & (low > 0)
    width = high[unclamped].astype(np.float64) - low[unclamped]
    rounding = float(np.finfo(np.float32).eps * high.max())
    np.testing.assert_allclose(width, 2 * SCALE * sd[unclamped].astype(np.float64), rtol=0.0, atol=rounding)
    np.testing.assert_allclose(high[kept], t1[kept] + SCALE * sd[kept].astype(np.float64), rtol=1e-6)
    for image, bound in ((lowers[0], "lower"), (uppers[0], "upper")):
        meaning = meaning_of(image)
        assert (meaning.role, meaning.bound, meaning.quantity) == (f"T1{bound.title()}", bound, "T1")
        assert (meaning.alpha, meaning.delta, meaning.scale) == (0.1, 0.05, SCALE)
        assert meaning.calibration_id == "test_t1-fit_sd-a0.1-d0.05"
        assert meaning.window == meaning_of(maps[0]).window


@pytest.mark.slow
def test_bound_series_are_their_own_valid_parametric_maps(molli_with_bounds: Path) -> None:
    files = sorted((molli_with_bounds / "dicom").rglob("*.dcm"))
    datasets = {path: pydicom.dcmread(path) for path in files}
    by_series: dict[int, list[pydicom.Dataset]] = {}
    for ds in datasets.values():
        by_series.setdefault(int(ds.SeriesNumber), []).append(ds)
    assert sorted(by_series) == [11, 12, 21, 22, 90]  # 90: the structure reports
    assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 5
    for series, bound in ((21, "lower"), (22, "upper")):
        assert len(by_series[series]) == 2
        for instance in by_series[series]:
            assert instance.SOPClassUID == pydicom.uid.ParametricMapStorage
            assert instance.SeriesDescription.endswith(f"T1 {bound} bound 90% [ms]")
            mapping = instance.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
            assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
            assert mapping.LUTLabel == f"T1{bound.title()}"
            assert mapping.LUTExplanation.startswith(f"T1 {bound} bound of 90% calibrated interval")
            assert "QuantityDefinitionSequence" not in mapping  # not typed as the T1 value itself
            assert instance.ContentDescription.startswith(f"T1 {bound} bound (ms) = T1 ")
    t1_mapping = by_series[11][0].SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert t1_mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeMeaning == "T1"
    for path, ds in datasets.items():
        if int(ds.SeriesNumber) in (21, 22):
            assert [line for line in dciodvfy_lines(path) if "Error" in line] == [], path


def test_bound_images_written_alone_pass_dciodvfy(
    tmp_path: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    """Bound images on a simulated scan's geometry, without source images, as their own Parametric Maps."""
    scan_header, items = tiny_scan
    reference = next(item for item in items if isinstance(item, ismrmrd.Acquisition) and any(item.read_dir))
    images = interval_images(slice_maps(reference), calibration(), 2, MapIntervalConfig())
    writer = DicomSeriesWriter(scan_header, tmp_path / "dicom")
    paths = [path for image in images for path in writer.write(image)]
    assert len(paths) == 2
    for path in paths:
        assert [line for line in dciodvfy_lines(path) if "Error" in line] == [], path
    lower = pydicom.dcmread(paths[0])
    assert lower.SeriesNumber == 21
    assert "T1 lower bound 90% [ms]" in lower.SeriesDescription
    np.testing.assert_array_equal(lower.pixel_array, images[0].data[0, 0])


def test_a_foreign_bound_without_alpha_still_says_which_bound_it_is() -> None:
    meaning = ImageMeaning(role="T2Upper", is_map=True, units="ms", bound="upper")
    assert series_description("t2prep", meaning) == "t2prep T2 upper bound [ms]"


def learned_calibration(threshold: float = 0.1) -> IntervalCalibration:
    """A PUQ-like calibration: the combined SD kind, with an out-of-distribution threshold at acceleration 2."""
    return replace(
        calibration(),
        id="test_t1-mc_sd_disagreement-a0.1-d0.05",
        uncertainty="mc_sd_disagreement",
        out_of_distribution=OutOfDistribution(level=0.01, thresholds={2: threshold}),
    )


def learned_maps(far: int) -> MapImages:
    """``slice_maps`` as a learned map with combined SD, whose model fit is 20% off in the first ``far`` kept pixels."""
    item = slice_maps()
    t1 = item.maps.values["T1"]
    model_fit = t1 * 1.05
    kept = np.flatnonzero(item.maps.kept)
    model_fit.ravel()[kept[:far]] = t1.ravel()[kept[:far]] * 1.2
    maps = replace(item.maps, sd_kind="mc_sd_disagreement", model_fit={"T1": model_fit.astype(np.float32)})
    return replace(item, maps=maps)


def test_a_calibration_of_another_sd_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="scales the SD kind mc_sd_disagreement, but the molli maps' SD is fit_sd"):
        interval_images(slice_maps(), learned_calibration(), 2, MapIntervalConfig())


def test_learned_maps_get_a_flag_series_where_they_leave_the_model_fit(
    tmp_path: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    path = tmp_path / "learned.json"
    save_interval_calibration(learned_calibration(), path)
    item = learned_maps(far=30)
    sent: list[object] = []
    run_chain(interval_gadget_chain(str(path)), tiny_scan[0], iter([item]), sent.append)
    _lower, _upper, flags, warning, maps = sent
    assert maps is item
    assert isinstance(flags, ismrmrd.Image)
    meaning = meaning_of(flags)
    assert (flags.image_series_index, meaning.role, meaning.units) == (23, "T1OutOfDistribution", "1")
    assert meaning.calibration_id == "test_t1-mc_sd_disagreement-a0.1-d0.05"
    assert "more than 10% of its value" in meaning.comment
    expected = np.zeros(item.maps.kept.size, np.float32)
    expected[np.flatnonzero(item.maps.kept)[:30]] = 1.0  # 20% off flagged, 5% off not, unkept never
    np.testing.assert_array_equal(flags.data[0, 0].ravel(), expected)
    assert isinstance(warning, str)
    assert warning.startswith(f"WARNING slice 2: 30 of {item.maps.kept.sum()} T1 pixels")


def test_a_few_flagged_pixels_send_the_flags_without_a_warning(
    tmp_path: Path, tiny_scan: tuple[ismrmrd.xsd.ismrmrdHeader, list[object]]
) -> None:
    path = tmp_path / "learned.json"
    save_interval_calibration(learned_calibration(), path)
    sent: list[object] = []
    run_chain(interval_gadget_chain(str(path)), tiny_scan[0], iter([learned_maps(far=3)]), sent.append)
    assert [meaning_of(s).role for s in sent[:3]] == ["T1Lower", "T1Upper", "T1OutOfDistribution"]  # type: ignore[arg-type]
    assert float(sent[2].data.sum()) == 3.0  # type: ignore[union-attr]
    assert not any(isinstance(s, str) for s in sent)


def test_bounds_say_when_the_map_is_not_made_as_the_calibrations_were() -> None:
    """The promise is for maps like the calibration's: another size or MC sample count is said in the comments."""
    other = replace(calibration(), recipe={"matrix": 64, "mc_samples": 20})
    item = slice_maps()
    sampled = replace(item, maps=replace(item.maps, samples={"T1": np.zeros((40, 16, 16), np.float32)}))
    lower, upper = interval_images(sampled, other, 2, MapIntervalConfig())
    for image in (lower, upper):
        assert meaning_of(image).comment.endswith(
            "; calibrated on 64x64 slices, this map is 16x16; calibrated with 20 MC samples, this map has 40"
        )
    same = replace(calibration(), recipe={"matrix": 16, "mc_samples": 20})
    assert "calibrated on" not in meaning_of(interval_images(item, same, 2, MapIntervalConfig())[0]).comment
