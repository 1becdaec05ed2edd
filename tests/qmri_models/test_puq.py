"""PUQ stage 2 and its training: the MLP's inputs, guided fitting, map SD over MC samples, train puq-fit."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qmri_models.fitting.guided import fit_guided_maps, learned_map, phase_weights
from qmri_models.fitting.maps import fit_maps
from qmri_models.networks.fit_mlp import FitMlp, mlp_features
from qmri_models.pretrained import load_fit_mlp, load_recon_network, weights_path
from qmri_models.protocols import MOLLI_TI_MS
from qmri_models.signal_models import signal_model
from qmri_models.simulation.anatomy import random_phantom_ranges
from qmri_models.training.configs import ErrorHeadTrainingConfig, FitTrainingConfig, ReconTrainingConfig
from qmri_models.training.train_error_head import train_error_head
from qmri_models.training.train_fit import fit_loss, train_fit
from qmri_models.training.train_recon import train_recon

TIMES = np.asarray(MOLLI_TI_MS)


def molli_images(t1_ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return MOLLI magnitude images `(8, 1, n)` of pixels with the given T1 (A=1, B=2)."""
    t1_star = t1_ms / (2.0 - 1.0)  # T1 = T1* (B/A - 1)
    signal = np.abs(1.0 - 2.0 * np.exp(-TIMES[:, None] / t1_star[None, :]))
    return (signal + 0.002 * rng.standard_normal(signal.shape))[:, None, :]


def test_mlp_features_are_normalised_by_the_largest_signal_and_zero_when_unguided() -> None:
    magnitude = torch.tensor([[0.1, 0.5, 1.0, 2.0], [3.0, 1.0, 0.5, 0.1]])
    sd = torch.tensor([[0.01, 0.02, 0.03, 0.04], [0.3, 0.2, 0.1, 0.0]])
    features = mlp_features(magnitude, sd)
    torch.testing.assert_close(features, mlp_features(7.0 * magnitude, 7.0 * sd))
    torch.testing.assert_close(features[0], torch.tensor([0.05, 0.25, 0.5, 1.0, 0.005, 0.01, 0.015, 0.02]))
    assert torch.equal(mlp_features(magnitude, None)[:, 4:], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sd must have"):
        mlp_features(magnitude, sd[:, :2])


def test_fit_mlp_has_the_papers_shape_and_returns_non_negative_ms() -> None:
    mlp = FitMlp(n_phases=8, map_name="t2")
    linear = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(16, 64), (64, 64), (64, 64), (64, 64), (64, 1)]
    out = mlp.predict_ms(torch.rand(10, 8), torch.rand(10, 8))
    assert out.shape == (10,)
    assert bool((out >= 0).all())


def test_model_based_guidance_discounts_the_phases_the_network_is_unsure_of() -> None:
    """One phase corrupted where its SD says so: weighted by 1/SD^2 the fit recovers T1, unweighted it does not."""
    rng = np.random.default_rng(0)
    t1 = rng.uniform(800, 1500, 400)
    images = molli_images(t1, rng)
    sd = np.full(images.shape, 0.002)
    images[2] += 0.3  # a badly reconstructed phase...
    sd[2] = 0.3  # ...that the uncertainty flags
    model = signal_model("molli")
    mask = np.ones((1, t1.size), bool)
    guided = fit_maps(model, images, TIMES, mask=mask, weights=phase_weights(images, sd)).values["T1"][0]
    unguided = fit_maps(model, images, TIMES, mask=mask).values["T1"][0]
    assert np.median(np.abs(guided - t1) / t1) < 0.01
    assert np.median(np.abs(unguided - t1) / t1) > 0.05


def test_phase_weights_floor_the_sd_at_a_fraction_of_the_signal() -> None:
    mean = np.array([[[2.0]], [[1.0]]])
    weights = phase_weights(mean, np.array([[[0.0]], [[0.5]]]))
    np.testing.assert_allclose(weights.ravel(), [1 / 0.02**2, 1 / 0.5**2])


def test_map_sd_is_the_spread_of_fitting_every_sample() -> None:
    """The batched side-by-side fit of all samples equals fitting each sample alone."""
    rng = np.random.default_rng(1)
    t1 = rng.uniform(700, 1600, (6, 5))
    clean = molli_images(t1.ravel(), rng).reshape(8, 6, 5)
    samples = clean[None] * (1 + 0.03 * rng.standard_normal((5, 8, 6, 5)))
    mean, sd = samples.mean(axis=0), samples.std(axis=0)
    model = signal_model("molli")
    maps = fit_guided_maps(model, mean, sd, samples, TIMES, mask_threshold=0.0)
    weights = phase_weights(mean, sd)
    alone = np.stack([fit_maps(model, s, TIMES, mask=maps.mask, weights=weights).values["T1"] for s in samples])
    np.testing.assert_allclose(maps.sds["T1"], alone.std(axis=0), rtol=1e-4)
    at_mean = fit_maps(model, mean, TIMES, mask=maps.mask, weights=weights).values["T1"]
    np.testing.assert_allclose(maps.values["T1"], at_mean, rtol=1e-6)
    assert "MC" in maps.sd_method
    assert maps.sd_kind == "mc_sd"
    assert not maps.model_fit


def test_learned_fit_sd_grows_with_its_distance_to_the_model_fit() -> None:
    """The learned map's SD is sqrt(spread^2 + (learned - model-based)^2); the model-based map is kept beside it."""
    rng = np.random.default_rng(5)
    t1 = rng.uniform(700, 1600, (6, 5))
    clean = molli_images(t1.ravel(), rng).reshape(8, 6, 5)
    samples = (clean[None] * (1 + 0.03 * rng.standard_normal((5, 8, 6, 5)))).astype(np.float32)
    mean, sd = samples.mean(axis=0), samples.std(axis=0)
    torch.manual_seed(0)
    mlp = FitMlp(n_phases=8, guided=True)  # untrained: far from the model fit
    model = signal_model("molli")
    spread_only = fit_guided_maps(
        model, mean, sd, samples, TIMES, fit="learned", mlp=mlp, mask_threshold=0.0, with_disagreement=False
    )
    combined = fit_guided_maps(model, mean, sd, samples, TIMES, fit="learned", mlp=mlp, mask_threshold=0.0)

    at_mean = fit_maps(model, mean, TIMES, mask=combined.mask, weights=phase_weights(mean, sd)).values["T1"]
    np.testing.assert_allclose(combined.model_fit["T1"], at_mean, rtol=1e-5)
    np.testing.assert_allclose(combined.values["T1"], spread_only.values["T1"])
    kept = combined.kept
    expected = np.hypot(spread_only.sds["T1"], combined.values["T1"] - at_mean)
    np.testing.assert_allclose(combined.sds["T1"][kept], expected[kept], rtol=1e-4)
    assert np.all(combined.sds["T1"][kept] > 10 * spread_only.sds["T1"][kept])
    assert combined.sd_kind == "mc_sd_disagreement"
    assert "model fit" in combined.sd_method


def test_learned_fit_reports_the_spread_of_the_mlp_over_samples() -> None:
    rng = np.random.default_rng(2)
    samples = rng.uniform(0.2, 1.0, (4, 8, 3, 3)).astype(np.float32)
    mean, sd = samples.mean(axis=0), samples.std(axis=0)
    torch.manual_seed(0)
    mlp = FitMlp(n_phases=8, guided=True)
    maps = fit_guided_maps(
        signal_model("molli"),
        mean,
        sd,
        samples,
        TIMES,
        fit="learned",
        mlp=mlp,
        mask_threshold=0.0,
        with_disagreement=False,
    )
    mask = maps.mask
    each = np.stack([learned_map(mlp, s, sd, mask) for s in samples])
    np.testing.assert_allclose(maps.sds["T1"], each.std(axis=0), rtol=1e-5, atol=1e-6)
    assert maps.sd_kind == "mc_sd"
    with pytest.raises(ValueError, match="guidance"):
        fit_guided_maps(signal_model("molli"), mean, sd, samples, TIMES, fit="learned", mlp=mlp, guided=False)
    with pytest.raises(ValueError, match="T2"):
        fit_guided_maps(signal_model("t2prep"), mean, sd, samples, TIMES, fit="learned", mlp=mlp)


@pytest.fixture(scope="module")
def tiny_recon_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barely trained small reconstruction network (MOLLI, 96^2)."""
    out = tmp_path_factory.mktemp("recon")
    config = ReconTrainingConfig(
        map_name="t1", n_train=2, n_val=1, matrix=96, n_coils=4, accelerations=(4,), n_iterations=1, hidden=8, steps=2
    )
    train_recon(config, out)
    return out / "weights.pt"


def _tiny_stage_one(recon_weights: Path) -> dict[str, Any]:
    """``StageOneData`` fields of a few small MOLLI slices through the tiny network (the trainers' shared recipe)."""
    return {
        "map_name": "t1",
        "recon_weights": str(recon_weights),
        "n_train": 2,
        "n_val": 1,
        "matrix": 96,
        "n_coils": 4,
        "accelerations": (4,),
    }


@pytest.mark.slow
def test_train_puq_fit_learns_resumes_and_loads(tmp_path: Path, tiny_recon_weights: Path) -> None:
    config = FitTrainingConfig(
        **_tiny_stage_one(tiny_recon_weights),
        mc_samples=3,
        epochs=3,
        batch_size=256,
        learning_rate=3e-3,
        phantom_fraction=0.5,  # one of the two training slices and the one validation slice
        loss="relative",
    )
    history = train_fit(config, tmp_path)
    assert history.epochs == [1, 2, 3]
    assert history.n_train_pixels > 1000
    assert set(history.val_rmse_by_object_ms) == {"guided phantom", "unguided phantom"}
    assert history.val_rmse_by_object_ms["guided phantom"] == history.val_rmse_guided_ms[-1]
    # T1 in the brain is 300-4500 ms: a trained MLP is far nearer than a constant guess of 0
    assert history.val_rmse_guided_ms[-1] < 1500.0
    resumed = train_fit(replace(config, epochs=4), tmp_path)
    assert resumed.epochs == [1, 2, 3, 4]
    assert resumed.val_rmse_guided_ms[:3] == history.val_rmse_guided_ms
    for guided in (True, False):
        mlp = load_fit_mlp(tmp_path / "fit_weights.pt", guided=guided)
        assert mlp.guided is guided
        assert mlp.map_name == "t1"
    weights = torch.load(tmp_path / "fit_weights.pt", weights_only=True)
    assert weights["config"]["loss"] == "relative"
    assert weights["phantom_ranges"] == random_phantom_ranges()  # what the model card names
    with pytest.raises(ValueError, match="mc_samples differ"):
        train_fit(replace(config, mc_samples=4, epochs=5), tmp_path)


def test_fit_loss_weighs_errors_relative_to_the_truth_or_as_the_paper() -> None:
    predicted = torch.tensor([2.0, 0.5, 20.0])
    target = torch.tensor([1.0, 1.0, 10.0])
    # relative errors 1, -0.5, 1: a tenfold longer time with a tenfold larger error weighs as much
    torch.testing.assert_close(fit_loss(predicted, target, "relative"), torch.tensor((1.0 + 0.25 + 1.0) / 3))
    torch.testing.assert_close(fit_loss(predicted, target, "mse"), torch.tensor((1.0 + 0.25 + 100.0) / 3))


def test_fit_training_config_refuses_an_unknown_loss() -> None:
    with pytest.raises(ValueError, match="loss must be one of mse, relative, got 'l1'"):
        FitTrainingConfig(loss="l1")  # type: ignore[arg-type]


@pytest.mark.slow
def test_train_error_head_resumes_and_ships_the_network_with_its_head(tmp_path: Path, tiny_recon_weights: Path) -> None:
    config = ErrorHeadTrainingConfig(
        **_tiny_stage_one(tiny_recon_weights),
        mc_samples=2,
        hidden=4,
        steps=30,
        validate_every=15,
    )
    history = train_error_head(config, tmp_path)
    assert history.steps == [15, 30]
    # the head starts at the mean squared error everywhere and the NLL falls from there
    assert history.val_nll[-1] < history.val_nll[0] + 0.05
    assert 0.1 < history.val_calibration[-1] < 10
    resumed = train_error_head(replace(config, steps=45), tmp_path)
    assert resumed.steps == [15, 30, 45]
    assert resumed.val_nll[:2] == history.val_nll
    network = load_recon_network(tmp_path / "weights.pt")
    plain = load_recon_network(tiny_recon_weights)
    assert network.error_head is not None
    assert plain.error_head is None
    for name, value in plain.state_dict().items():  # the reconstruction is the frozen network's
        torch.testing.assert_close(network.state_dict()[name], value)
    with pytest.raises(ValueError, match="hidden differ"):
        train_error_head(replace(config, hidden=5, steps=60), tmp_path)
    with pytest.raises(ValueError, match="already has an error head"):
        train_error_head(replace(config, recon_weights=str(tmp_path / "weights.pt")), tmp_path / "again")


def test_weights_path_names_what_to_run_when_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="qmri train puq-fit"):
        weights_path("fit", tmp_path / "nothing.pt")
