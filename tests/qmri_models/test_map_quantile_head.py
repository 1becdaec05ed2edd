"""The map quantile head: it learns known heteroscedastic quantiles by the pinball loss, its offsets follow the
module's contract (``sigmoid x map``, 0 outside the kept pixels, one slice as a batch of one), it survives a save and
load, and ``interval_offsets`` picks the SD or the head.

Synthetic law: maps of T1 values whose true value is ``map (1 + s z)`` with z standard normal and a relative spread
s that varies over the image and is what the SD channel reports (``SD = s map``), so the alpha/2 and 1 - alpha/2
quantiles of the relative error are ``-/+ 1.645 s``.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from qmri_models.calibration.offsets import interval_offsets
from qmri_models.networks.map_quantile_head import MapQuantileHead, map_features, quantile_offsets
from qmri_models.pretrained import load_map_quantile_head
from qmri_models.training.train_map_quantile_head import QuantileHeadTraining, train_map_quantile_head

ALPHA = 0.1
SIZE = 24


def synthetic_maps(seed: int, n_slices: int) -> dict[str, np.ndarray]:
    """Return value, sd, truth, kept and the true relative spread of ``n_slices`` slices. Shapes `(n, SIZE, SIZE)`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE
    spread = np.stack([0.02 + 0.18 * ((x * np.cos(a) + y * np.sin(a)) % 1.0) for a in rng.uniform(0, 6, n_slices)])
    value = rng.uniform(600.0, 1600.0, (n_slices, SIZE, SIZE))
    kept = rng.random((n_slices, SIZE, SIZE)) > 0.05
    truth = value * (1.0 + spread * rng.standard_normal(value.shape))
    value = np.where(kept, value, 0.0)
    return {"value": value, "sd": spread * value, "truth": truth, "kept": kept, "spread": spread}


@pytest.fixture(scope="module")
def trained() -> MapQuantileHead:
    torch.manual_seed(0)
    maps = synthetic_maps(1, 40)
    settings = QuantileHeadTraining(alpha=ALPHA, hidden=8, epochs=60, batch=8, learning_rate=3e-3)
    result = train_map_quantile_head(
        maps["value"], maps["sd"], None, maps["truth"], maps["kept"], quantity="T1", settings=settings
    )
    assert result.held_out_loss < 1.5 * result.train_loss
    return result.head


def test_the_head_learns_the_known_quantiles(trained: MapQuantileHead) -> None:
    """On new slices: about 1 - alpha covered at scale 1, both offsets close to 1.645 s map where s varies 10-fold."""
    maps = synthetic_maps(2, 20)
    lower, upper = quantile_offsets(trained, maps["value"], maps["sd"], None, maps["kept"])
    kept = maps["kept"]
    covered = (maps["value"] - lower <= maps["truth"]) & (maps["truth"] <= maps["value"] + upper)
    assert covered[kept].mean() == pytest.approx(1 - ALPHA, abs=0.03)
    expected = norm.ppf(1 - ALPHA / 2) * maps["spread"] * maps["value"]
    for offset in (lower, upper):
        assert np.corrcoef(offset[kept], expected[kept])[0, 1] > 0.9
        assert np.median(offset[kept] / expected[kept]) == pytest.approx(1.0, abs=0.15)
    constant = np.quantile(np.abs(maps["truth"] - maps["value"])[kept] / maps["value"][kept], 1 - ALPHA)
    width = (lower + upper)[kept] / maps["value"][kept]
    assert (
        width.mean() < 0.95 * 2 * constant
    )  # narrower (by about 10% for this law: 0.36 against 0.40) than one relative width for all at the same coverage


def test_offsets_are_sigmoid_times_map_zero_outside_and_one_slice_is_a_batch(trained: MapQuantileHead) -> None:
    maps = synthetic_maps(3, 3)
    lower, upper = quantile_offsets(trained, maps["value"], maps["sd"], None, maps["kept"])
    assert lower.shape == upper.shape == maps["value"].shape
    for offset in (lower, upper):
        assert (offset[~maps["kept"]] == 0).all()
        assert ((offset >= 0) & (offset <= maps["value"])).all()
    one = quantile_offsets(trained, maps["value"][1], maps["sd"][1], None, maps["kept"][1])
    np.testing.assert_allclose(one[0], lower[1], rtol=1e-5)  # float32 convolutions batched differently
    np.testing.assert_allclose(one[1], upper[1], rtol=1e-5)


def test_features_are_clipped_dimensionless_and_zero_outside() -> None:
    value = np.array([[[1000.0, 2000.0], [0.0, 500.0]]])
    sd = np.array([[[100.0, 1e9, 5.0, 50.0]]]).reshape(1, 2, 2)
    fit = np.array([[[900.0, 2000.0, 0.0, 1000.0]]]).reshape(1, 2, 2)
    features = map_features(value, sd, fit, value > 0, quantity="T1").numpy()
    assert features.shape == (1, 4, 2, 2)
    np.testing.assert_allclose(features[0, :, 0, 0], [0.0, 0.1, 0.1, 1.0], atol=1e-6)
    assert features[0, 1, 0, 1] == 3.0  # relative SD clipped
    assert features[0, 2, 1, 1] == -1.0  # (500 - 1000) / 500
    assert (features[0, :, 1, 0] == 0).all()  # not kept


def test_saved_head_loads_by_path_with_the_same_offsets(trained: MapQuantileHead, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"settings": trained.settings(), "state_dict": trained.state_dict(), "training": {}}, path)
    loaded = load_map_quantile_head(path)
    assert (loaded.quantity, loaded.alpha, loaded.hidden) == ("T1", ALPHA, 8)
    maps = synthetic_maps(4, 2)
    for a, b in zip(
        quantile_offsets(trained, maps["value"], maps["sd"], None, maps["kept"]),
        interval_offsets(str(path), "T1", maps["value"], maps["sd"], None, maps["kept"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="trained on T1 maps, not T2"):
        interval_offsets(str(path), "T2", maps["value"], maps["sd"], None, maps["kept"])
    with pytest.raises(FileNotFoundError, match=r"no map quantile head 'nowhere\.pt'"):
        load_map_quantile_head("nowhere.pt")


def test_without_a_head_the_offsets_are_the_sd() -> None:
    maps = synthetic_maps(5, 1)
    lower, upper = interval_offsets(None, "T1", maps["value"], maps["sd"], None, maps["kept"])
    assert lower is maps["sd"]
    assert upper is maps["sd"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantity": "PD", "alpha": 0.1}, "quantity must be one of"),
        ({"quantity": "T1", "alpha": 1.0}, "alpha must be in"),
        ({"quantity": "T1", "alpha": 0.1, "hidden": 0}, "hidden must be at least 1"),
    ],
)
def test_bad_head_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MapQuantileHead(**kwargs)


def test_training_needs_two_slices_and_a_pixel() -> None:
    maps = synthetic_maps(6, 2)
    with pytest.raises(ValueError, match="at least 2 slices"):
        train_map_quantile_head(
            maps["value"][:1], maps["sd"][:1], None, maps["truth"][:1], maps["kept"][:1], quantity="T1"
        )
    with pytest.raises(ValueError, match="keeps no pixel"):
        train_map_quantile_head(
            maps["value"], maps["sd"], None, maps["truth"], np.zeros_like(maps["kept"]), quantity="T1"
        )


def test_a_head_file_replaced_under_its_path_is_loaded_again(tmp_path: Path) -> None:
    """Between streams a site may replace its head file: the next offsets come from the new weights."""
    path = tmp_path / "head.pt"
    maps = synthetic_maps(7, 1)
    offsets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        head = MapQuantileHead(quantity="T1", alpha=ALPHA, hidden=4)
        torch.save({"settings": head.settings(), "state_dict": head.state_dict(), "training": {}}, path)
        os.utime(path, ns=(seed * 10**9, seed * 10**9))  # distinct modification times even on a coarse clock
        offsets.append(interval_offsets(str(path), "T1", maps["value"], maps["sd"], None, maps["kept"])[0])
        np.testing.assert_array_equal(
            offsets[-1], quantile_offsets(head.eval(), maps["value"], maps["sd"], None, maps["kept"])[0]
        )
    assert not np.array_equal(offsets[0], offsets[1])
