"""The qMRI Diffusor: its scalings, its simulated training data, training with exact resume, map generation and
shipping with a model card."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qmri_models.diffusion.denoiser import ConditionalDenoiser, DenoiserConfig
from qmri_models.diffusion.schedule import NoiseSchedule
from qmri_models.diffusor.model import Diffusor
from qmri_models.diffusor.scaling import image_level, maps_from_unit_range, maps_to_unit_range
from qmri_models.diffusor_evaluation import Generation, brain_scores, sphere_rows, tissue_table
from qmri_models.pretrained import load_diffusor
from qmri_models.protocols import IR_TI_MS
from qmri_models.simulation.anatomy import NIST_T1_MS
from qmri_models.training.configs import DiffusorTrainingConfig
from qmri_models.training.diffusor_data import simulate_ir_examples
from qmri_models.training.ship_diffusor import check_examples_t1_nrmse, model_card, ship_diffusor
from qmri_models.training.train_diffusor import CHECKPOINT, WEIGHTS, _cropped, train_diffusor

TINY = DiffusorTrainingConfig(
    n_train=4,
    n_val=1,
    matrix=40,
    crop=32,
    channels=(8, 16),
    norm_groups=4,
    head_channels=8,
    train_steps=20,
    steps=4,
    batch_size=2,
    validate_every=2,
)


def test_map_scaling_is_the_papers_and_inverts() -> None:
    maps = torch.stack(
        [
            torch.tensor([[0.0, 50.0, 1000.0, 4000.0]]),  # T1 ms
            torch.tensor([[0.0, 0.2, 1.0, 1.4]]),  # PD
            torch.tensor([[0.0, 1.6, 1.9, 2.0]]),  # B
        ]
    ).double()
    scaled = maps_to_unit_range(maps)
    assert float(scaled[0, 0, 2]) == pytest.approx(2 * np.tanh(1.0) - 1)  # T1 in seconds, as the paper
    assert float(scaled[2, 0, 3]) == pytest.approx(2 * np.tanh(1.0) - 1)  # B over 2
    torch.testing.assert_close(scaled[:, 0, 0], torch.full((3,), -1.0, dtype=torch.float64))
    assert bool((scaled < 1).all() and (scaled >= -1).all())
    torch.testing.assert_close(maps_from_unit_range(scaled), maps, rtol=1e-6, atol=1e-6)
    assert float(maps_from_unit_range(torch.full((3, 1, 1), -1.3))[0].max()) == 0.0  # below -1 reads as 0


def test_image_level_is_the_99th_percentile_of_each_pixels_largest_magnitude() -> None:
    magnitude = np.random.default_rng(0).random((7, 20, 20))
    assert image_level(magnitude) == pytest.approx(np.percentile(magnitude.max(axis=0), 99))
    assert image_level(np.zeros((7, 4, 4))) == 1.0


def test_simulated_examples_follow_the_ir_model_and_repeat() -> None:
    """At SNR 1000 the images are |PD (1 - B exp(-TI/T1))| of the maps they come with, all over the image level."""
    kwargs = {"matrix": 32, "snr_range": (1000.0, 1000.0), "efficiency_range": (0.8, 1.0), "seed": 3}
    examples = simulate_ir_examples(3, phantom_fraction=0.34, **kwargs)  # type: ignore[arg-type]
    assert examples.condition.shape == (3, 7, 32, 32)
    assert examples.maps.shape == (3, 3, 32, 32)
    t1, pd, b = examples.maps[:, 0], examples.maps[:, 1], examples.maps[:, 2]
    mask = examples.mask
    ti = torch.tensor(IR_TI_MS).view(1, 7, 1, 1)
    model = (pd[:, None] * (1 - b[:, None] * torch.exp(-ti / t1.clamp(min=1)[:, None]))).abs()
    error = (examples.condition - model).abs()[mask[:, None].expand_as(model)]
    assert float(error.max()) < 0.01  # noise SD 1/1000 of the mean tissue signal
    assert float(examples.condition.amax(dim=1).flatten(1).quantile(0.99, dim=1).sub(1).abs().max()) < 1e-5
    per_slice_b = [set(np.unique(b[i][mask[i]].numpy()).round(6)) for i in range(3)]
    assert all(len(v) == 1 and 1.8 <= next(iter(v)) <= 2.0 for v in per_slice_b)  # one efficiency per slice
    assert float(t1[~mask].abs().max()) == 0.0
    again = simulate_ir_examples(3, phantom_fraction=0.34, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(again.condition, examples.condition)


def test_training_batches_are_cut_to_a_square_of_the_slices() -> None:
    target = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    condition = target.repeat(1, 3, 1, 1)[:, :7] + 0.5
    cut_target, cut_condition = _cropped(target, condition, 32, step=5, seed=0)
    assert cut_target.shape == (2, 3, 32, 32)
    assert cut_condition.shape == (2, 7, 32, 32)
    top, left = divmod(int(cut_target[0, 0, 0, 0]), 40)
    torch.testing.assert_close(cut_target, target[..., top : top + 32, left : left + 32])
    torch.testing.assert_close(cut_condition, condition[..., top : top + 32, left : left + 32])
    places = {int(_cropped(target, condition, 32, step=s, seed=0)[0][0, 0, 0, 0]) for s in range(20)}
    assert len(places) > 5  # a new place each step
    assert _cropped(target, condition, 40, step=5, seed=0)[0] is target


def test_training_writes_its_files_and_resumes_exactly(tmp_path: Path) -> None:
    whole = train_diffusor(TINY, tmp_path / "whole")
    assert whole.steps == [2, 4]
    assert len(whole.val_loss) == len(whole.val_t1_nrmse) == 2
    assert all(np.isfinite(whole.val_t1_nrmse))
    train_diffusor(replace(TINY, steps=2), tmp_path / "parts")
    resumed = train_diffusor(TINY, tmp_path / "parts")
    assert resumed.steps == [2, 4]
    first = torch.load(tmp_path / "whole" / WEIGHTS, weights_only=False)["diffusor"]["denoiser"]["state_dict"]
    second = torch.load(tmp_path / "parts" / WEIGHTS, weights_only=False)["diffusor"]["denoiser"]["state_dict"]
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=0, msg=name)
    assert (tmp_path / "whole" / CHECKPOINT).exists()
    with pytest.raises(ValueError, match="matrix differ"):
        train_diffusor(replace(TINY, matrix=48), tmp_path / "whole")


def test_generated_maps_have_the_images_size_units_and_spread(tmp_path: Path) -> None:
    torch.manual_seed(0)
    denoiser = ConditionalDenoiser(
        DenoiserConfig(3, 7, channels=(8, 16), attention_levels=(False, False), norm_groups=4, head_channels=8)
    )
    diffusor = Diffusor.from_state(Diffusor(denoiser, NoiseSchedule(train_steps=20), IR_TI_MS, 16).state())
    magnitude = np.random.default_rng(1).random((7, 30, 26)).astype(np.float32)
    maps = diffusor.generate_maps(magnitude, n_samples=3, steps=5, seed=2, stride=8)  # 16 px patches
    assert maps.mean.shape == maps.sd.shape == (3, 30, 26)
    assert maps.samples.shape == (3, 3, 30, 26)
    np.testing.assert_allclose(maps.mean, maps.samples.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps.sd, maps.samples.std(axis=0, ddof=1), rtol=1e-4, atol=1e-5)
    doubled = diffusor.generate_maps(2 * magnitude, n_samples=3, steps=5, seed=2, stride=8)
    np.testing.assert_allclose(doubled.value("PD"), 2 * maps.value("PD"), rtol=1e-4)  # PD in the images' units
    np.testing.assert_allclose(doubled.value("T1"), maps.value("T1"), rtol=1e-4)
    with pytest.raises(ValueError, match="takes 7 images"):
        diffusor.generate_maps(magnitude[:5])
    with pytest.raises(ValueError, match="stride <= size, got 16, 32"):
        diffusor.generate_maps(magnitude, stride=32)


def test_evaluation_scores_both_methods_on_spheres_and_brain(tmp_path: Path) -> None:
    """The evaluation's plumbing against what is known: the LM fit reads the NIST spheres within 3% at SNR 100
    (README's table), every sphere in the phantom gets a row, and both methods get tissue scores."""
    train_diffusor(TINY, tmp_path)
    diffusor = load_diffusor(tmp_path / WEIGHTS)
    generation = Generation(n_samples=2, steps=2)
    rows = sphere_rows(diffusor, 100.0, generation, slices=1, matrix=64)
    assert sorted(round(r.true_t1_ms) for r in rows) == sorted(round(t) for t in NIST_T1_MS)
    for row in rows:
        if 100 <= row.true_t1_ms <= 1884:
            assert row.fit_mean_ms == pytest.approx(row.true_t1_ms, rel=0.03), row
        assert row.diffusor_sd_ms >= 0
    (brain,) = brain_scores(diffusor, 30.0, generation, slices=1, matrix=64)
    assert {t.tissue for t in brain.fit} == {t.tissue for t in brain.diffusor} >= {"white_matter", "grey_matter"}
    fit_wm = next(t for t in brain.fit if t.tissue == "white_matter")
    assert fit_wm.median_ape_percent < 10  # fully sampled at SNR 30
    table = tissue_table([brain], ("white_matter", "grey_matter", "nowhere"))
    assert table[0][:2] == ("30", "white_matter")
    assert table[2][2:] == ("-", "-")


def test_shipping_writes_the_weights_with_their_check_figure_and_a_card_from_the_run(tmp_path: Path) -> None:
    train_diffusor(TINY, tmp_path / "run")
    card = ship_diffusor(tmp_path / "run", "tiny", device_note="a test", dest=tmp_path)
    shipped = torch.load(tmp_path / "diffusor_tiny.pt", weights_only=True)
    check = shipped["check"]["val_t1_nrmse"]
    text = card.read_text()
    assert card.name == "DIFFUSOR_TINY.md"
    assert f"{check:.5f}" in text
    assert "--n-train 4 --n-val 1 --matrix 40 --crop 32 --channels 8 16" in text
    assert "32 px patches" in text
    assert " min on a test.\n" in text
    diffusor = load_diffusor(tmp_path / "diffusor_tiny.pt")
    assert check_examples_t1_nrmse(shipped["config"], diffusor) == pytest.approx(check, rel=1e-5)
    assert model_card("tiny", shipped, check, "a test") == text
