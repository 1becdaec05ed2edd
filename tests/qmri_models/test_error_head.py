"""The error head: its loss, what it learns, and how MC sampling hands its prediction on as the uncertainty."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.optimize import minimize_scalar

from qmri_models.networks.error_head import VARIANCE_FLOOR, ErrorHead, error_nll
from qmri_models.networks.mc_sampling import mc_sample
from qmri_models.networks.puq_recon import puq_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.simulation.scan import ScanSettings, simulate_scan


@pytest.mark.parametrize("squared_error", [1e-4, 0.3, 7.0])
def test_nll_is_smallest_at_the_squared_error(squared_error: float) -> None:
    """The variance that minimises the loss, found by scipy, is the squared error: the head learns E|e|^2."""

    def loss(log_variance: float) -> float:
        variance = torch.tensor([np.exp(log_variance)], dtype=torch.float64)
        return float(error_nll(variance, torch.tensor([squared_error], dtype=torch.float64)))

    best = minimize_scalar(loss, bounds=(-20.0, 10.0), method="bounded", options={"xatol": 1e-9})
    assert np.exp(best.x) == pytest.approx(squared_error, rel=1e-4)


@pytest.mark.slow
def test_head_learns_an_error_that_follows_one_of_its_inputs() -> None:
    """Errors drawn with an SD of 3 times a smooth MC-SD input: the trained head predicts that SD, calibrated."""
    rng = np.random.default_rng(0)
    n, phases, size = 32, 2, 16

    def smooth(low: float, high: float) -> torch.Tensor:
        field = gaussian_filter(rng.standard_normal((n, phases, size, size)), (0, 0, 3, 3))
        return torch.from_numpy(low + (high - low) * (field - field.min()) / np.ptp(field)).float()

    mean = torch.complex(smooth(-1, 1), smooth(-1, 1))
    zero_filled = mean + 0.3 * torch.complex(smooth(-1, 1), smooth(-1, 1))
    mc_sd = smooth(0.1, 1.0)
    noise = torch.from_numpy(rng.standard_normal((n, phases, size, size, 2))).float()
    squared_error = (3.0 * mc_sd).square() * noise.square().sum(-1) / 2  # complex errors of SD 3 * mc_sd
    torch.manual_seed(0)
    head = ErrorHead(n_phases=phases, hidden=8)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(1500):
        loss = error_nll(head.variance(mean, zero_filled, mc_sd), squared_error)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = head(mean, zero_filled, mc_sd)
    truth = 3.0 * mc_sd
    assert (
        np.corrcoef(predicted.flatten().numpy(), truth.flatten().numpy())[0, 1] > 0.6
    )  # 0.73 measured; an untrained head is near 0
    assert float(predicted.square().mean() / truth.square().mean()) == pytest.approx(1.0, abs=0.1)


def test_head_output_is_positive_and_floored() -> None:
    head = ErrorHead(n_phases=3, hidden=4)
    head.start_at(1e-300)  # the raw output far below the clamp
    with torch.no_grad():
        out = head(
            torch.zeros(1, 3, 5, 5, dtype=torch.complex64),
            torch.zeros(1, 3, 5, 5, dtype=torch.complex64),
            torch.zeros(1, 3, 5, 5),
        )
    assert out.shape == (1, 3, 5, 5)
    assert float(out.min()) >= np.sqrt(VARIANCE_FLOOR)
    with pytest.raises(ValueError, match="hidden"):
        ErrorHead(n_phases=3, hidden=0)


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 32x32, 4-coil, 4x MOLLI slice: k-space, sampled lines, coil maps."""
    settings = ScanSettings(contrast="molli", matrix=32, n_coils=4, acceleration=4, acs_fraction=0.25, seed=1)
    sim = simulate_scan(settings)[0]
    return sim.kdata, sim.sampled, sim.sens


def test_mc_sampling_hands_on_the_heads_prediction_as_the_uncertainty(scan: tuple) -> None:
    kdata, sampled, sens = (torch.from_numpy(a) for a in scan)
    torch.manual_seed(0)
    plain = UnrolledRecon(n_phases=8, n_iterations=1, hidden=4)
    with_head = UnrolledRecon(n_phases=8, n_iterations=1, hidden=4, error_head_hidden=4)
    with_head.load_state_dict(plain.state_dict(), strict=False)
    torch.manual_seed(1)
    without = mc_sample(plain, kdata, sampled, sens, n_samples=3)
    torch.manual_seed(1)
    estimate = mc_sample(with_head, kdata, sampled, sens, n_samples=3)
    assert without.error_sd is None
    assert without.uncertainty is without.sd
    torch.testing.assert_close(estimate.mean, without.mean)  # the head leaves the reconstruction alone
    assert estimate.error_sd is not None
    assert estimate.uncertainty is estimate.error_sd
    assert estimate.error_sd.shape == estimate.sd.shape
    assert not torch.equal(estimate.error_sd, estimate.sd)


def test_predicted_error_is_in_the_scanners_units(scan: tuple) -> None:
    """The network sees scaled k-space, so ten times the raw data gives ten times the predicted error SD."""
    kdata, sampled, sens = scan
    torch.manual_seed(0)
    network = UnrolledRecon(n_phases=8, n_iterations=1, hidden=4, dropout=0.0, error_head_hidden=4)
    one = puq_reconstruct(network, kdata, sampled, sens, n_samples=2)
    ten = puq_reconstruct(network, 10 * kdata, sampled, sens, n_samples=2)
    assert one.error_sd is not None
    assert ten.error_sd is not None
    torch.testing.assert_close(ten.error_sd, 10 * one.error_sd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ten.mean, 10 * one.mean, rtol=1e-4, atol=1e-5)
