"""What an MRD image means: the meta written (Gadgetron's keys, spelled here independently) and read back."""

import ismrmrd
import numpy as np
import pytest

from gadgets.image_meta import ImageMeaning, bound_role, meaning_from_meta, meaning_of, meta_text, set_meaning
from gadgets.items import MapImages, PhaseImages, SliceContext
from gadgets.output import ImageSeriesConfig, MapSeriesConfig, map_images_to_mrd, phase_images_to_mrd
from qmri_models.fitting.maps import SliceMaps

PHASE = ImageMeaning(
    role="Image",
    sequence_description="_phases",
    comment="phase 3 prep 180.123 ms",
    window=(192.49612345, 347.5131),
    phase_index=3,
    prep_time_ms=180.123456,
)
MAP = ImageMeaning(
    role="T1",
    is_map=True,
    units="ms",
    sequence_description="_T1_MAP",
    comment="T1 map (ms), molli",
    window=(1250.0, 1700.25),
)
SD_MAP = ImageMeaning(
    role="T1SD",
    is_map=True,
    units="ms",
    sequence_description="_T1SD_MAP",
    comment="T1 standard deviation (ms) from the fit residual",
    window=(35.123456789, 60.0),
)
LOWER = ImageMeaning(
    role="T1Lower",
    is_map=True,
    units="ms",
    sequence_description="_T1Lower_MAP",
    comment="T1 lower bound (ms)",
    window=(1250.0, 1700.25),
    bound="lower",
    alpha=0.1,
    delta=0.05,
    scale=1.2345678901234567,
    calibration_id="t1_molli_fit_sd",
)
UPPER = ImageMeaning(role="T2Upper", is_map=True, units="ms", bound="upper", alpha=0.2, delta=0.1, scale=3.0)


def meta_items(text: str) -> list[tuple[str, str]]:
    return list(ismrmrd.Meta.deserialize(text).items())


def test_phase_image_meta_is_gadgetrons() -> None:
    assert meta_items(meta_text(PHASE)) == [
        ("GADGETRON_DataRole", "Image"),
        ("GADGETRON_SeqDescription", "_phases"),
        ("GADGETRON_ImageComment", "phase 3 prep 180.123 ms"),
        ("PhaseIndex", "3"),
        ("PrepTime_ms", "180.123"),
        ("GADGETRON_WindowCenter", "192.496"),
        ("GADGETRON_WindowWidth", "347.513"),
    ]


def test_map_meta_is_gadgetrons_and_marks_it_quantitative() -> None:
    assert meta_items(meta_text(MAP)) == [
        ("GADGETRON_DataRole", "T1"),
        ("DataRole", "Quantitative"),
        ("GADGETRON_SeqDescription", "_T1_MAP"),
        ("GADGETRON_ImageComment", "T1 map (ms), molli"),
        ("Units", "ms"),
        ("GADGETRON_WindowCenter", "1250"),
        ("GADGETRON_WindowWidth", "1700.25"),
    ]


def test_bound_meta_says_which_bound_of_which_interval_with_the_scale_in_full() -> None:
    assert meta_items(meta_text(LOWER)) == [
        ("GADGETRON_DataRole", "T1Lower"),
        ("DataRole", "Quantitative"),
        ("GADGETRON_SeqDescription", "_T1Lower_MAP"),
        ("GADGETRON_ImageComment", "T1 lower bound (ms)"),
        ("Units", "ms"),
        ("GADGETRON_WindowCenter", "1250"),
        ("GADGETRON_WindowWidth", "1700.25"),
        ("IntervalBound", "lower"),
        ("IntervalAlpha", "0.1"),
        ("IntervalDelta", "0.05"),
        ("IntervalScale", "1.2345678901234567"),
        ("CalibrationID", "t1_molli_fit_sd"),
    ]
    assert LOWER.scale == 1.2345678901234567  # not rounded: the bounds are recomputed from it exactly


@pytest.mark.parametrize(
    "meaning",
    [PHASE, MAP, SD_MAP, LOWER, UPPER, ImageMeaning()],
    ids=["phase", "map", "sd_map", "lower", "upper", "default"],
)
def test_meaning_reads_back_equal(meaning: ImageMeaning) -> None:
    assert meaning_from_meta(meta_text(meaning)) == meaning
    image = ismrmrd.Image.from_array(np.zeros((2, 2), np.float32), transpose=False)
    set_meaning(image, meaning)
    assert meaning_of(image) == meaning


def test_output_images_read_back_to_the_meta_they_carry() -> None:
    rng = np.random.default_rng(0)
    refs = [ismrmrd.Acquisition.from_array(np.zeros((1, 8), np.complex64)) for _ in range(3)]
    images = (rng.normal(size=(3, 12, 12)) + 1j * rng.normal(size=(3, 12, 12))).astype(np.complex64) * 123.4567
    sd = np.abs(rng.normal(size=(3, 12, 12))).astype(np.float32)
    context = SliceContext(0, refs, (220.0, 220.0, 8.0))
    phases = PhaseImages(images, np.array([100.0, 180.123456, 1234.5678]), context, sd=sd)
    t1 = rng.uniform(200.0, 2500.0, size=(12, 12)).astype(np.float32)
    mask = np.ones((12, 12), bool)
    maps = SliceMaps({"T1": t1}, {"T1": t1 / 10}, {"T1": "ms"}, mask, mask, maxima={"T1": 5000.0})
    written = phase_images_to_mrd(phases, ImageSeriesConfig()) + map_images_to_mrd(
        MapImages(maps, "T1", "molli", context), MapSeriesConfig()
    )
    assert [meaning_of(image).role for image in written] == ["Image"] * 3 + ["PhaseSD"] * 3 + ["T1", "T1SD"]
    assert [meaning_of(image).prep_time_ms for image in written[:3]] == [100.0, 180.123, 1234.57]
    for image in written:
        assert meta_text(meaning_of(image)) == image.attribute_string


def test_further_maps_and_their_sd_maps_go_to_their_series() -> None:
    """T1, PD and B as the Diffusor gives them: PD and B after the T1 pair, their SDs after them when asked."""
    refs = [ismrmrd.Acquisition.from_array(np.zeros((1, 8), np.complex64))]
    context = SliceContext(0, refs, (220.0, 220.0, 8.0))
    mask = np.ones((6, 6), bool)
    values = {name: np.full((6, 6), v, np.float32) for name, v in (("T1", 900.0), ("PD", 0.8), ("B", 1.9))}
    sds = {name: v / 20 for name, v in values.items()}
    maps = SliceMaps(values, sds, {"T1": "ms", "PD": "a.u.", "B": "1"}, mask, mask)
    item = MapImages(maps, "T1", "inversion_recovery", context)
    config = MapSeriesConfig(extra_maps="PD,B", extra_series_index=13, extra_sd_series_index=17)
    written = map_images_to_mrd(item, config)
    assert [(image.image_series_index, meaning_of(image).role) for image in written] == [
        (11, "T1"),
        (12, "T1SD"),
        (13, "PD"),
        (14, "B"),
        (17, "PDSD"),
        (18, "BSD"),
    ]
    np.testing.assert_allclose(written[5].data.squeeze(), 1.9 / 20, rtol=1e-6)
    assert meaning_of(written[4]).units == "a.u."
    assert [image.image_series_index for image in map_images_to_mrd(item, MapSeriesConfig(extra_maps="PD"))] == [
        11,
        12,
        13,
    ]
    no_sd = MapImages(SliceMaps(values, {"T1": sds["T1"]}, maps.units, mask, mask), "T1", "mrf", context)
    with pytest.raises(ValueError, match="the mrf maps have no PD SD; set extra_sd_series_index to 0"):
        map_images_to_mrd(no_sd, config)


def test_numbers_are_kept_as_the_meta_stores_them() -> None:
    assert PHASE.window == (192.496, 347.513)
    assert PHASE.prep_time_ms == 180.123
    assert SD_MAP.window == (35.1235, 60.0)
    tiny = ImageMeaning(window=(1.23456789e-7, 9.87654321e8))
    assert tiny.window == (1.23457e-7, 9.87654e8)
    assert meaning_from_meta(meta_text(tiny)) == tiny


def test_what_an_sd_map_is_the_sd_of() -> None:
    assert SD_MAP.is_uncertainty
    assert SD_MAP.quantity == "T1"
    assert not MAP.is_uncertainty
    assert MAP.quantity == "T1"
    assert ImageMeaning(role="T2*SD", is_map=True).quantity == "T2STAR"
    phase_sd = ImageMeaning(role="PhaseSD")  # per-phase SD images are not maps
    assert not phase_sd.is_uncertainty
    assert phase_sd.quantity == "PHASESD"


def test_what_a_bound_is_the_bound_of() -> None:
    assert (LOWER.quantity, UPPER.quantity) == ("T1", "T2")
    assert not LOWER.is_uncertainty
    assert not UPPER.is_uncertainty
    assert bound_role("T1", "lower") == "T1Lower"
    assert bound_role("T2*", "upper") == "T2*Upper"
    assert ImageMeaning(role="T2*Upper", is_map=True, bound="upper").quantity == "T2STAR"
    assert ImageMeaning(role="T1Lower", is_map=True).quantity == "T1LOWER"  # no bound in the meta: not a bound
    unbounded = (PHASE, MAP, SD_MAP, ImageMeaning())
    assert all((m.bound, m.alpha, m.delta, m.scale, m.calibration_id) == (None,) * 4 + ("",) for m in unbounded)


def test_empty_meta_gives_the_defaults() -> None:
    assert meaning_from_meta("") == ImageMeaning()
    assert ImageMeaning().role == "Image"
    assert meta_items(meta_text(ImageMeaning())) == [("GADGETRON_DataRole", "Image")]
    image = ismrmrd.Image.from_array(np.zeros((2, 2), np.float32), transpose=False)
    assert meaning_of(image) == ImageMeaning()


def test_foreign_meta_first_values_empty_values_and_no_window() -> None:
    meta = ismrmrd.Meta(
        {
            "GADGETRON_DataRole": ["T2", "Extra"],
            "DataRole": "Quantitative",
            "GADGETRON_ImageComment": "",
            "GADGETRON_WindowCenter": " 60 ",
            "GADGETRON_WindowWidth": "0",
        }
    )
    meaning = meaning_from_meta(meta.serialize())
    assert meaning == ImageMeaning(role="T2", is_map=True)
    assert meaning.comment == ""  # an empty value is no comment, not "None"
    only_centre = ismrmrd.Meta({"GADGETRON_WindowCenter": "60"})
    assert meaning_from_meta(only_centre.serialize()).window is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("GADGETRON_WindowCenter", "x", "image meta GADGETRON_WindowCenter must be a number; got 'x'"),
        ("GADGETRON_WindowWidth", "nan", "image meta GADGETRON_WindowWidth must be a finite number; got 'nan'"),
        ("PrepTime_ms", "inf", "image meta PrepTime_ms must be a finite number; got 'inf'"),
        ("PhaseIndex", "-1", "image meta PhaseIndex must be an integer of at least 0; got '-1'"),
        ("PhaseIndex", "1.5", "image meta PhaseIndex must be an integer of at least 0; got '1.5'"),
        ("IntervalBound", "middle", "image meta IntervalBound must be one of lower, upper; got 'middle'"),
        ("IntervalScale", "wide", "image meta IntervalScale must be a number; got 'wide'"),
        ("IntervalAlpha", "1.5", r"alpha must be in \(0, 1\); got 1.5"),
    ],
)
def test_meta_numbers_that_are_not_numbers_are_errors(key: str, value: str, message: str) -> None:
    text = ismrmrd.Meta({"GADGETRON_WindowCenter": "1", "GADGETRON_WindowWidth": "2", key: value}).serialize()
    with pytest.raises(ValueError, match=message):
        meaning_from_meta(text)


def test_meta_that_is_not_xml_is_an_error() -> None:
    with pytest.raises(ValueError, match="image meta is not ISMRMRD Meta XML"):
        meaning_from_meta("<ismrmrdMeta><meta>")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window": (100.0, 0.0)}, r"window must have a finite centre and a positive width; got \(100\.0, 0\.0\)"),
        (
            {"window": (float("nan"), 10.0)},
            r"window must have a finite centre and a positive width; got \(nan, 10\.0\)",
        ),
        ({"prep_time_ms": float("inf")}, "prep_time_ms must be finite; got inf"),
        ({"phase_index": -1}, "phase_index must be at least 0; got -1"),
        ({"role": "T1", "bound": "lower"}, "the role of the lower bound must end in 'Lower'; got 'T1'"),
        ({"role": "T1Lower", "bound": "upper"}, "the role of the upper bound must end in 'Upper'; got 'T1Lower'"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\); got 0.0"),
        ({"delta": float("nan")}, r"delta must be in \(0, 1\); got nan"),
        ({"scale": -1.0}, "scale must be finite and at least 0; got -1.0"),
        ({"scale": float("inf")}, "scale must be finite and at least 0; got inf"),
    ],
)
def test_a_meaning_with_impossible_numbers_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageMeaning(**fields)  # type: ignore[arg-type]
