"""The deep ensemble: its estimate is numpy's mean and SD over the members' deterministic images."""

import numpy as np
import pytest
import torch

from qmri_models.networks.ensemble import check_members, ensemble_reconstruct
from qmri_models.networks.puq_recon import deterministic_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.simulation.scan import ScanSettings, simulate_scan


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 32x32, 4-coil, 4x MOLLI slice: k-space, sampled lines, coil maps."""
    settings = ScanSettings(contrast="molli", matrix=32, n_coils=4, acceleration=4, acs_fraction=0.25, seed=1)
    sim = simulate_scan(settings)[0]
    return sim.kdata, sim.sampled, sim.sens


def members(n: int, n_phases: int = 8) -> list[UnrolledRecon]:
    """Return ``n`` randomly initialised tiny networks, each from its own seed, dropout 0.3."""
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        nets.append(UnrolledRecon(n_phases=n_phases, n_iterations=1, hidden=4, dropout=0.3))
    return nets


@pytest.mark.parametrize("n_members", [2, 3])
def test_ensemble_is_numpys_mean_and_sd_over_the_members(scan, n_members) -> None:
    nets = members(n_members)
    images = np.stack([deterministic_reconstruct(m, *scan, device="cpu").numpy() for m in nets])
    estimate = ensemble_reconstruct(nets, *scan)
    assert estimate.n_samples == n_members
    assert estimate.samples is not None
    assert estimate.samples.shape == (n_members, 8, 32, 32)
    np.testing.assert_array_equal(estimate.samples.numpy(), images)  # member order, dropout off
    np.testing.assert_allclose(estimate.mean.numpy(), images.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(estimate.sd.numpy(), images.std(axis=0), rtol=1e-5, atol=1e-6)
    assert estimate.error_sd is None
    assert estimate.uncertainty is estimate.sd
    assert float(estimate.sd.mean()) > 0  # members initialised apart disagree


def test_ensemble_is_deterministic_and_leaves_the_members_as_they_were(scan) -> None:
    nets = members(2)
    nets[0].train()
    nets[1].eval()
    first, second = ensemble_reconstruct(nets, *scan), ensemble_reconstruct(nets, *scan)
    torch.testing.assert_close(first.mean, second.mean, rtol=0, atol=0)
    assert nets[0].training
    assert not nets[1].training
    assert not any(n.mc_dropout for n in nets)


def test_members_must_agree_on_phases_and_be_at_least_two(scan) -> None:
    with pytest.raises(ValueError, match=r"same number of phases, got \[8, 8, 4\]"):
        ensemble_reconstruct([*members(2), *members(1, n_phases=4)], *scan)
    with pytest.raises(ValueError, match="at least 2 members"):
        check_members(members(1))
    assert check_members(members(3)) == 8
