"""DiffusorGadget on a replayed IR scan, with tiny weights trained by the test on 16 px patches: maps and SD series
shaped and masked like the fit's, DICOM clean, the protocol, the stride and the site checked."""

from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from gadgets.cli import main
from gadgets.evaluate import read_series
from gadgets.runtime.chain import ChainError, load_chain, parse_chain
from gadgets.runtime.replay import replay
from qmri_models.fitting.maps import MASK_THRESHOLD, MIN_ISLAND_PIXELS, fit_mask
from qmri_models.training.configs import DiffusorTrainingConfig
from qmri_models.training.train_diffusor import WEIGHTS, train_diffusor
from tests.chain_variants import with_gadget_replaced
from tests.conftest import dciodvfy_lines, make_raw

pytestmark = pytest.mark.slow

TINY = DiffusorTrainingConfig(
    n_train=2,
    n_val=1,
    matrix=32,
    crop=16,
    channels=(8, 16),
    norm_groups=4,
    head_channels=8,
    train_steps=20,
    steps=2,
    batch_size=2,
    validate_every=2,
)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diffusor")
    train_diffusor(TINY, out)
    return out / WEIGHTS


def diffusor_chain(tmp_path: Path, weights: Path, **extra: object) -> Path:
    properties: dict[str, object] = {"weights": weights, "samples": 3, "steps": 4, "stride": 8, "device": "cpu"}
    properties.update(extra)
    text = with_gadget_replaced("t1_ir", "Fit", "DiffusorGadget", **properties)
    path = tmp_path / "t1_ir_diffusion_test.xml"
    path.write_text(text)
    return path


def test_ir_scan_gives_t1_and_sd_series_masked_like_the_fit_and_clean_dicom(tmp_path: Path, tiny_weights: Path) -> None:
    raw = make_raw(tmp_path / "ir.h5", contrast="ir", phantom="spheres", matrix=48, snr=100.0, seed=4)
    out = tmp_path / "out"
    replay(raw, load_chain(diffusor_chain(tmp_path, tiny_weights, send_phase_images="true")), out, progress=False)
    maps, _ = read_series(out / "images.h5", 11)
    sds, sd_images = read_series(out / "images.h5", 12)
    phases, _ = read_series(out / "images.h5", 1)
    assert maps.shape == sds.shape == (1, 48, 48)
    mask = fit_mask(phases, MASK_THRESHOLD, MIN_ISLAND_PIXELS)  # the 7 IR images the Diffusor saw
    assert float(np.abs(maps[0][~mask]).max()) == 0.0
    assert np.all(np.isfinite(maps))
    assert np.all(maps >= 0)
    assert np.all(sds >= 0)
    assert float(sds[0][mask].mean()) > 0  # three different generations
    meta = dict(ismrmrd.Meta.deserialize(sd_images[0].attribute_string))
    assert "SD over 3 Diffusor samples (ddim, 4 steps)" in str(meta)
    fits, fit_images = read_series(out / "images.h5", 16)  # the LM fit of the same images, beside the generated T1
    assert dict(ismrmrd.Meta.deserialize(fit_images[0].attribute_string))["GADGETRON_DataRole"] == "T1ModelFit"
    assert float(np.abs(fits[0][~mask]).max()) == 0.0
    assert float(np.median(fits[0][mask])) > 100  # fitted T1 (ms) of the phantom's spheres and fluid
    dicoms = sorted((out / "dicom").rglob("*.dcm"))
    assert dicoms
    for path in dicoms:
        assert [line for line in dciodvfy_lines(path) if line.startswith("Error")] == [], path


def test_a_scan_of_other_inversion_times_is_refused_naming_both(tmp_path: Path, tiny_weights: Path) -> None:
    raw = make_raw(tmp_path / "molli.h5", contrast="molli", matrix=32, seed=1)
    with pytest.raises(Exception, match=r"inversion times .* but the .* Diffusor was trained for 50, 100, 250"):
        replay(raw, load_chain(diffusor_chain(tmp_path, tiny_weights)), tmp_path / "out", progress=False)


def test_a_client_chain_cannot_choose_the_sample_count(tmp_path: Path) -> None:
    text = with_gadget_replaced("t1_ir", "Fit", "DiffusorGadget", samples=50)
    with pytest.raises(ChainError, match="samples"):
        parse_chain(text, name="client")


def test_evaluate_diffusor_prints_the_sphere_and_tissue_tables(
    tiny_weights: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    args = ["--weights", str(tiny_weights), "--snr", "100", "--brain-slices", "1", "--matrix", "64", "--samples", "2"]
    args += ["--stride", "8"]
    assert main(["evaluate-diffusor", *args, "--steps", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| 100 | 1884 | 18" in out  # the LM fit of the 1884 ms sphere reads 18xx ms
    assert "| 100 | white_matter |" in out
    assert "Pearson after blur" in out
    assert "16 px patches every 8 px" in out
    assert main(["evaluate-diffusor", *args, "--steps", "3"]) == 2
    assert "steps must divide train_steps (20), got 3" in caplog.text


def test_a_step_count_the_schedule_cannot_take_stops_the_stream_before_any_slice(
    tmp_path: Path, tiny_weights: Path
) -> None:
    raw = make_raw(tmp_path / "ir.h5", contrast="ir", matrix=32, seed=2)
    chain = load_chain(diffusor_chain(tmp_path, tiny_weights, steps=3))
    with pytest.raises(Exception, match=r"steps must divide train_steps \(20\), got 3"):
        replay(raw, chain, tmp_path / "out", progress=False)


def test_a_stride_beyond_the_patch_stops_the_stream_before_any_slice(tmp_path: Path, tiny_weights: Path) -> None:
    raw = make_raw(tmp_path / "ir.h5", contrast="ir", matrix=32, seed=2)
    chain = load_chain(diffusor_chain(tmp_path, tiny_weights, stride=17))
    with pytest.raises(Exception, match=r"stride <= size, got 16, 17"):
        replay(raw, chain, tmp_path / "out", progress=False)
