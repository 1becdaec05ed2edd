"""Training of the PUQ reconstruction network: simulated examples, learning, checkpoints and exact resume."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qmri_models.networks.puq_recon import input_scale
from qmri_models.networks.unrolled import sens_expand
from qmri_models.simulation import anatomy
from qmri_models.simulation.anatomy import random_phantom_ranges
from qmri_models.training.configs import ErrorHeadTrainingConfig, FitTrainingConfig, ReconTrainingConfig
from qmri_models.training.recon_data import phantom_recipe, phantom_slices, simulate_recon_examples
from qmri_models.training.train_recon import CHECKPOINT, HISTORY, WEIGHTS, _examples, batch_indices, train_recon

TINY = ReconTrainingConfig(
    map_name="t2",
    n_train=4,
    n_val=2,
    matrix=96,
    n_coils=2,
    accelerations=(4,),
    n_iterations=1,
    hidden=8,
    steps=4,
    batch_size=2,
    learning_rate=3e-3,
    validate_every=2,
)


def test_examples_are_scaled_consistent_and_seeded() -> None:
    examples = simulate_recon_examples("t1", 3, matrix=96, n_coils=2, accelerations=(4, 6), snr=50.0, seed=3)
    assert examples.kdata.shape == (3, 8, 2, 96, 96)
    assert examples.target.shape == (3, 8, 96, 96)
    assert set(examples.acceleration.tolist()) <= {4, 6}
    torch.testing.assert_close(input_scale(examples.kdata, examples.sens), torch.ones(3), rtol=1e-4, atol=1e-4)
    # the sampled k-space is the target's k-space (through the ESPIRiT maps) plus noise: of two coils at 96^2 the
    # maps explain about 80% of the signal, so anything unrelated to the target (e.g. a misplaced scale) fails
    measured = sens_expand(examples.target, examples.sens) * examples.sampled[:, :, None, :, None]
    noise = (examples.kdata - measured).abs().square().mean().sqrt()
    assert float(noise) < 0.3 * float(measured.abs().square().mean().sqrt())
    again = simulate_recon_examples("t1", 3, matrix=96, n_coils=2, accelerations=(4, 6), snr=50.0, seed=3)
    torch.testing.assert_close(again.kdata, examples.kdata)


@pytest.mark.parametrize(("n", "fraction", "expected"), [(24, 0.33, 8), (6, 0.33, 2), (5, 0.0, 0), (3, 1.0, 3)])
def test_phantom_slices_are_the_fraction_rounded_and_seeded(n: int, fraction: float, expected: int) -> None:
    chosen = phantom_slices(n, fraction, seed=7)
    assert chosen.shape == (n,)
    assert int(chosen.sum()) == expected
    np.testing.assert_array_equal(phantom_slices(n, fraction, seed=7), chosen)
    with pytest.raises(ValueError, match="phantom_fraction must lie in"):
        phantom_slices(n, 1.5, seed=7)


def test_phantom_places_differ_between_seeds() -> None:
    places = {tuple(np.flatnonzero(phantom_slices(24, 0.33, seed))) for seed in range(5)}
    assert len(places) == 5


def test_phantom_examples_replace_brain_slices_and_keep_the_others() -> None:
    """The phantom slices show spheres in fluid; every other slice is the brain slice it was without phantoms."""
    kwargs = {"matrix": 64, "n_coils": 2, "accelerations": (4,), "snr": 50.0, "seed": 5}
    brains = simulate_recon_examples("t2", 3, **kwargs)  # type: ignore[arg-type]
    mixed = simulate_recon_examples("t2", 3, phantom_fraction=0.34, **kwargs)  # type: ignore[arg-type]
    chosen = phantom_slices(3, 0.34, seed=5)
    assert chosen.sum() == 1
    assert mixed.truth_ms is not None
    assert brains.truth_ms is not None
    for i, phantom in enumerate(chosen):
        if phantom:
            # one T2 per sphere (6 to 14) and one of the fluid, where a brain slice's T2 varies smoothly
            values = torch.unique(mixed.truth_ms[i][mixed.tissue[i]])
            assert 7 <= len(values) <= 15
            assert 1000.0 <= float(values.max()) <= 2000.0
            assert not torch.equal(mixed.truth_ms[i], brains.truth_ms[i])
        else:
            torch.testing.assert_close(mixed.kdata[i], brains.kdata[i])
            torch.testing.assert_close(mixed.truth_ms[i], brains.truth_ms[i])


def test_phantom_fraction_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="phantom_fraction must lie in"):
        FitTrainingConfig(phantom_fraction=-0.1)
    with pytest.raises(ValueError, match="phantom_fraction must lie in"):
        ReconTrainingConfig(phantom_fraction=1.5)


def test_recon_training_examples_take_the_phantom_fraction(tmp_path: Path) -> None:
    """The cached training examples are the simulator's with the configured phantoms, and the fraction is in the
    cache key (a run with another fraction simulates anew)."""
    config = replace(TINY, n_train=2, n_val=1, matrix=32, phantom_fraction=0.5)
    train, _ = _examples(config, tmp_path)
    expected = simulate_recon_examples(
        "t2", 2, matrix=32, n_coils=2, accelerations=(4,), snr=50.0, seed=config.seed, phantom_fraction=0.5
    )
    brain = simulate_recon_examples("t2", 2, matrix=32, n_coils=2, accelerations=(4,), snr=50.0, seed=config.seed)
    torch.testing.assert_close(train.truth_ms, expected.truth_ms)
    assert not torch.equal(train.truth_ms, brain.truth_ms)
    recipe = torch.load(tmp_path / "examples_train.pt", weights_only=True)["recipe"]
    assert recipe["phantom_fraction"] == 0.5
    assert recipe["phantom_ranges"] == random_phantom_ranges()


def test_phantom_ranges_are_in_the_cache_key_only_with_phantoms() -> None:
    """Widening a random phantom range changes what a run with phantoms simulates, so it must miss the old cache."""
    assert phantom_recipe(0.0) == {}
    ranges = phantom_recipe(0.33)["phantom_ranges"]
    assert ranges["sphere_t2_ms"] == anatomy.RANDOM_SPHERE_T2_MS
    assert set(ranges) == {"sphere_count", "sphere_t1_ms", "sphere_t2_ms", "pd", "fluid_t1_ms", "fluid_t2_ms"}


def test_batch_order_covers_every_example_each_epoch() -> None:
    first = torch.cat([batch_indices(step, 6, 2, seed=0) for step in range(3)])
    second = torch.cat([batch_indices(step, 6, 2, seed=0) for step in range(3, 6)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(6))
    assert not torch.equal(first, second)


@pytest.mark.slow
def test_training_learns_and_writes_its_files(tmp_path: Path) -> None:
    """Two examples, no dropout: the loss falls as the network fits them, and validation beats zero filling."""
    config = replace(TINY, n_train=2, dropout=0.0, steps=60, validate_every=10)
    history = train_recon(config, tmp_path)
    assert history.train_loss[-1] < 0.85 * history.train_loss[0]
    assert history.val_zero_filled_nrmse is not None
    assert history.val_nrmse[-1] < history.val_zero_filled_nrmse
    for name in (CHECKPOINT, WEIGHTS, HISTORY, "examples_train.pt", "examples_val.pt"):
        assert (tmp_path / name).exists()
    weights = torch.load(tmp_path / WEIGHTS, weights_only=False)
    assert weights["config"]["hidden"] == 8


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_one_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train_recon(TINY, straight)
    resumed = tmp_path / "resumed"
    train_recon(replace(TINY, steps=2), resumed)
    train_recon(TINY, resumed)
    a = torch.load(straight / WEIGHTS, weights_only=False)["state_dict"]
    b = torch.load(resumed / WEIGHTS, weights_only=False)["state_dict"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@pytest.mark.slow
def test_resume_refuses_a_different_configuration(tmp_path: Path) -> None:
    train_recon(replace(TINY, steps=2), tmp_path)
    with pytest.raises(ValueError, match="hidden differ"):
        train_recon(replace(TINY, hidden=4), tmp_path)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        replace(TINY, batch_size=0)


@pytest.mark.slow
def test_train_command_trains_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gadgets.cli import main

    args = ["train", "puq-recon", "--map", "t2", "--out", str(tmp_path), "--n-train", "2", "--n-val", "1"]
    args += ["--matrix", "96", "--coils", "2", "--accelerations", "4", "--iterations", "1", "--hidden", "4"]
    args += ["--batch-size", "2", "--validate-every", "2", "--quiet"]
    assert main([*args, "--steps", "2"]) == 0
    assert main([*args, "--steps", "4"]) == 0
    assert "4 steps" in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert checkpoint["step"] == 4
    assert checkpoint["history"]["steps"] == [2, 4]


@pytest.mark.parametrize(
    ("network", "config"),
    [
        ("puq-recon", ReconTrainingConfig()),
        ("puq-fit", FitTrainingConfig()),
        ("puq-error-head", ErrorHeadTrainingConfig()),
    ],
)
def test_train_command_defaults_are_the_configurations(network: str, config: object) -> None:
    """``qmri train`` writes no default of its own: every option it leaves out is the configuration's default."""
    from gadgets.cli import build_parser

    args = vars(build_parser().parse_args(["train", network, "--out", "run"]))
    field_of = {"map": "map_name", "coils": "n_coils", "iterations": "n_iterations"}
    not_fields = {"command", "network", "out", "device", "quiet", "run", "verbose", "debug", "recon_weights"}
    compared = {name: value for name, value in args.items() if name not in not_fields}
    assert len(compared) >= 8
    for name, value in compared.items():
        expected = getattr(config, field_of.get(name, name))
        assert (tuple(value) if isinstance(value, list) else value) == expected, name
