"""The shipped weights: the PUQ networks load, hold their model card's check figure, and their uncertainty means
something; the map quantile heads load and were trained on slices their calibrations never saw."""

import re

import numpy as np
import pytest
import torch

from qmri_models.calibration.files import load_interval_calibration
from qmri_models.networks.mc_sampling import McEstimate
from qmri_models.networks.puq_recon import puq_reconstruct
from qmri_models.pretrained import (
    MAP_NAMES,
    PRETRAINED_DIR,
    load_fit_mlp,
    load_map_quantile_head,
    load_recon_network,
    shipped_quantile_heads,
)
from qmri_models.puq_evaluation import HELD_OUT_SEED, combined_truth, uncertainty_error_correlation
from qmri_models.recon.cartesian import calibration_lines, phase_sensitivities
from qmri_models.simulation.scan import ScanSettings, SimulatedSlice, simulate_slice
from qmri_models.training.ship import check_examples_nrmse, model_card


def test_shipped_weights_are_small() -> None:
    total = sum(path.stat().st_size for path in PRETRAINED_DIR.glob("*.pt"))
    assert len(list(PRETRAINED_DIR.glob("puq_*.pt"))) == 4
    assert sorted(shipped_quantile_heads()) == ["t1_molli_puq", "t2prep_puq"]
    assert len(list(PRETRAINED_DIR.glob("diffusor_*.pt"))) == 1
    assert len(list(PRETRAINED_DIR.glob("*.pt"))) == 7
    assert total < 30e6


@pytest.mark.parametrize(("chain", "quantity"), [("t1_molli_puq", "T1"), ("t2prep_puq", "T2")])
def test_shipped_quantile_heads_load_and_were_trained_apart_from_the_calibration(chain: str, quantity: str) -> None:
    head = load_map_quantile_head(chain)
    assert (head.quantity, head.alpha) == (quantity, 0.1)
    training = torch.load(shipped_quantile_heads()[chain], weights_only=True)["training"]
    assert training["chain"] == chain
    calibration = load_interval_calibration(f"{chain}_quantiles")
    assert calibration.quantile_head == chain
    training_seeds = {s for seeds in training["recipe"]["file_seeds"].values() for s in seeds}
    calibration_seeds = {s for seeds in calibration.recipe["file_seeds"].values() for s in seeds}
    assert training_seeds
    assert not training_seeds & calibration_seeds
    assert training["recipe"]["matrix"] == calibration.recipe["matrix"]
    assert training["held_out_coverage"] == pytest.approx(0.9, abs=0.06)


@pytest.mark.slow
@pytest.mark.parametrize("map_name", MAP_NAMES)
def test_shipped_weights_reproduce_their_model_card(map_name: str) -> None:
    """The NRMSE on the card's fixed validation slices, re-simulated from their seed, within 2%."""
    state = torch.load(PRETRAINED_DIR / f"puq_recon_{map_name}.pt", weights_only=True)
    card = (PRETRAINED_DIR / f"PUQ_{map_name.upper()}.md").read_text()
    recorded = state["check"]["val_nrmse"]
    assert f"{recorded:.5f}" in card
    measured = check_examples_nrmse(map_name, state["config"], map_name)  # type: ignore[arg-type]
    assert measured == pytest.approx(recorded, rel=0.02)
    # and well below the zero-filled images' error the card reports
    zero_filled = float(re.search(r"zero-filled (\d\.\d+)", card).group(1))  # type: ignore[union-attr]
    assert measured < 0.7 * zero_filled
    for guided in (True, False):
        assert load_fit_mlp(map_name, guided=guided).map_name == map_name


@pytest.mark.parametrize("map_name", MAP_NAMES)
def test_model_card_is_generated_from_the_shipped_files(map_name: str) -> None:
    """The committed card is what ``qmri train puq-ship`` writes from the weights files (data, steps, commands)."""
    recon = torch.load(PRETRAINED_DIR / f"puq_recon_{map_name}.pt", weights_only=True)
    fit = torch.load(PRETRAINED_DIR / f"puq_fit_{map_name}.pt", weights_only=True)
    card = (PRETRAINED_DIR / f"PUQ_{map_name.upper()}.md").read_text()
    device_note = re.search(r"Wall time [\d.]+ min on (.*)\.$", card, re.MULTILINE).group(1)  # type: ignore[union-attr]
    generated = model_card(map_name, recon, fit, recon["check"]["val_nrmse"], device_note)  # type: ignore[arg-type]
    assert generated == card


@pytest.fixture(scope="module")
def held_out_t1() -> dict[int, list[tuple[SimulatedSlice, np.ndarray, McEstimate]]]:
    """Two held-out MOLLI slices at 6x, 8x and 10x (one seed per slice: only the sampling and noise differ), T=10."""
    network = load_recon_network("t1")
    torch.manual_seed(0)  # the dropout masks: the same verdict whatever ran before
    slices: dict[int, list[tuple[SimulatedSlice, np.ndarray, McEstimate]]] = {}
    for acceleration in (6, 8, 10):
        slices[acceleration] = []
        for index in range(2):
            settings = ScanSettings(
                contrast="molli", matrix=160, n_coils=8, acceleration=acceleration, snr=50.0, noise="white"
            )  # the network sees prewhitened data: white noise
            simulated = simulate_slice(settings, np.random.default_rng([HELD_OUT_SEED, index]))
            sens = phase_sensitivities(simulated.kdata, calibration_lines(simulated.sampled))
            estimate = puq_reconstruct(network, simulated.kdata, simulated.sampled, sens, n_samples=10)
            slices[acceleration].append((simulated, sens, estimate))
    return slices


def test_shipped_weights_carry_the_error_head() -> None:
    for map_name in MAP_NAMES:
        assert load_recon_network(map_name).error_head is not None


@pytest.mark.slow
def test_uncertainty_grows_with_acceleration(held_out_t1: dict) -> None:
    """Mean per-phase uncertainty relative to the signal: over 5% larger at 10x than at 6x on the same slices."""
    relative = {
        acceleration: np.asarray(
            [
                float(e.uncertainty[:, s.truth.labels > 0].mean() / e.mean.abs()[:, s.truth.labels > 0].mean())
                for s, _, e in slices
            ]
        )
        for acceleration, slices in held_out_t1.items()
        if acceleration in (6, 10)
    }
    # growth beyond the few percent that the dropout draw alone moves the figure
    assert np.all(relative[10] > 1.05 * relative[6]), relative


@pytest.mark.slow
def test_uncertainty_tells_where_the_error_is(held_out_t1: dict) -> None:
    """Pearson r of the blurred per-phase uncertainty and true error above 0.5, and above the MC SD's, at 8x."""
    for simulated, sens, estimate in held_out_t1[8]:
        tissue = simulated.truth.labels > 0
        error = np.abs(estimate.mean.numpy() - combined_truth(simulated, sens))
        r = uncertainty_error_correlation(estimate.uncertainty.numpy(), error, tissue)
        assert r > 0.5
        assert r > uncertainty_error_correlation(estimate.sd.numpy(), error, tissue)
