"""PUQ stage 1: the unrolled network's operators, determinism, MC dropout and batched sampling."""

import numpy as np
import pytest
import torch

from qmri_models.networks.mc_sampling import RunningMoments, mc_sample, samples_per_batch
from qmri_models.networks.unrolled import (
    DataConsistency,
    UnrolledRecon,
    centered_fft2,
    centered_ifft2,
    sens_expand,
    sens_reduce,
)
from qmri_models.recon import cartesian
from qmri_models.simulation.scan import ScanSettings, simulate_scan


@pytest.fixture(scope="module")
def slice_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 32x32, 4-coil, 4x MOLLI slice: k-space, sampled lines, coil maps and the noise-free images.

    White coil noise, as the network sees after prewhitening, so the coil maps are normalised as ESPIRiT's are.
    """
    settings = ScanSettings(
        contrast="molli", matrix=32, n_coils=4, acceleration=4, acs_fraction=0.25, seed=1, noise="white"
    )
    sim = simulate_scan(settings)[0]
    return (
        torch.from_numpy(sim.kdata),
        torch.from_numpy(sim.sampled),
        torch.from_numpy(sim.sens),
        torch.from_numpy(sim.images),
    )


def test_torch_fft_matches_the_numpy_recon_convention() -> None:
    rng = np.random.default_rng(0)
    img = (rng.standard_normal((3, 16, 12)) + 1j * rng.standard_normal((3, 16, 12))).astype(np.complex64)
    np.testing.assert_allclose(centered_fft2(torch.from_numpy(img)).numpy(), cartesian.centered_fft2(img), atol=1e-5)
    np.testing.assert_allclose(centered_ifft2(centered_fft2(torch.from_numpy(img))).numpy(), img, atol=1e-5)


def test_sens_reduce_is_the_adjoint_of_sens_expand() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.complex64, generator=g)
    y = torch.randn(2, 3, 4, 8, 8, dtype=torch.complex64, generator=g)
    sens = torch.randn(2, 4, 8, 8, dtype=torch.complex64, generator=g)
    left = torch.vdot(sens_expand(x, sens).flatten(), y.flatten())
    right = torch.vdot(x.flatten(), sens_reduce(y, sens).flatten())
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)


def test_hard_data_consistency_on_full_sampling_returns_the_measured_image(slice_tensors: tuple) -> None:
    _, _, sens, images = slice_tensors
    kdata = sens_expand(images[None], sens[None])
    sampled = torch.ones(1, images.shape[0], images.shape[1], dtype=torch.bool)
    layer = DataConsistency()
    with torch.no_grad():
        layer.logit.fill_(50.0)  # weight 1: the hard projection
    out = layer(torch.zeros_like(images[None]), kdata, sampled, sens[None])
    torch.testing.assert_close(out, images[None], rtol=1e-4, atol=1e-4)


def test_shapes_and_determinism_with_dropout_off(slice_tensors: tuple) -> None:
    kdata, sampled, sens, _ = slice_tensors
    torch.manual_seed(0)
    network = UnrolledRecon(n_phases=8, n_iterations=2, hidden=8).eval()
    with torch.no_grad():
        first = network(kdata[None], sampled[None], sens[None])
        second = network(kdata[None], sampled[None], sens[None])
    assert first.shape == (1, 8, 32, 32)
    assert first.dtype == torch.complex64
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_mc_samples_differ_and_sampling_restores_the_mode(slice_tensors: tuple) -> None:
    kdata, sampled, sens, _ = slice_tensors
    torch.manual_seed(0)
    network = UnrolledRecon(n_phases=8, n_iterations=2, hidden=8, dropout=0.3).eval()
    network.mc_dropout = True
    with torch.no_grad():
        a = network(kdata[None], sampled[None], sens[None])
        b = network(kdata[None], sampled[None], sens[None])
    assert not torch.allclose(a, b)
    network.mc_dropout = False
    estimate = mc_sample(network, kdata, sampled, sens, n_samples=6, batch_size=4)
    assert estimate.mean.shape == (8, 32, 32)
    assert estimate.sd.shape == (8, 32, 32)
    assert float(estimate.sd.mean()) > 0
    assert estimate.n_samples == 6
    assert not network.mc_dropout
    assert not network.training


def test_no_dropout_gives_zero_spread(slice_tensors: tuple) -> None:
    kdata, sampled, sens, _ = slice_tensors
    network = UnrolledRecon(n_phases=8, n_iterations=1, hidden=8, dropout=0.0)
    estimate = mc_sample(network, kdata, sampled, sens, n_samples=3, batch_size=2)
    assert float(estimate.sd.max()) < 1e-6


@pytest.mark.parametrize("batch", [1, 3, 7, 10])
def test_running_moments_equal_numpy_whatever_the_batches(batch: int) -> None:
    rng = np.random.default_rng(batch)
    samples = rng.standard_normal((10, 4, 5)) + 1j * rng.standard_normal((10, 4, 5))
    moments = RunningMoments()
    for start in range(0, 10, batch):
        moments.add(torch.from_numpy(samples[start : start + batch]))
    assert moments.mean is not None
    np.testing.assert_allclose(moments.mean.numpy(), samples.mean(axis=0), atol=1e-12)
    expected_sd = np.sqrt((np.abs(samples - samples.mean(axis=0)) ** 2).mean(axis=0))
    np.testing.assert_allclose(moments.sd().numpy(), expected_sd, atol=1e-12)


def test_batch_size_follows_free_memory_and_is_one_on_the_cpu(slice_tensors: tuple) -> None:
    network = UnrolledRecon(n_phases=8)
    full_size = torch.zeros((8, 8, 160, 160), dtype=torch.complex64)
    assert samples_per_batch(network, full_size) == 1  # on the CPU one sample per pass is fastest (measured)
    # 160^2, 64 hidden: 4 * 25600 * (8 * 64 + 4 * 2 * 8 * 8) bytes = 105 MB per sample, half of the free memory used
    assert samples_per_batch(network, full_size, free_bytes=80 * 2**30) == 409
    assert samples_per_batch(network, slice_tensors[0], free_bytes=80 * 2**30) > 409
    assert samples_per_batch(network, full_size, free_bytes=2**20) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_samples": 1}, "at least 2"), ({"n_samples": 4, "batch_size": 0}, "batch_size must be at least 1")],
)
def test_mc_sample_argument_errors(slice_tensors: tuple, kwargs: dict[str, int], match: str) -> None:
    kdata, sampled, sens, _ = slice_tensors
    with pytest.raises(ValueError, match=match):
        mc_sample(UnrolledRecon(n_phases=8, n_iterations=1, hidden=4), kdata, sampled, sens, **kwargs)


def test_wrong_shapes_are_named(slice_tensors: tuple) -> None:
    kdata, sampled, sens, _ = slice_tensors
    network = UnrolledRecon(n_phases=8, n_iterations=1, hidden=4)
    with pytest.raises(ValueError, match="sampled must be"):
        network(kdata[None], sampled[None, :, :10], sens[None])
    with pytest.raises(ValueError, match="8 phases"):
        network(kdata[None, :4], sampled[None, :4], sens[None])


@pytest.mark.cuda
def test_cuda_sampling_matches_cpu_without_dropout(slice_tensors: tuple) -> None:
    kdata, sampled, sens, _ = slice_tensors
    network = UnrolledRecon(n_phases=8, n_iterations=2, hidden=8, dropout=0.0)
    cpu = mc_sample(network, kdata, sampled, sens, n_samples=2)
    gpu = mc_sample(network.cuda(), kdata.cuda(), sampled.cuda(), sens.cuda(), n_samples=2)
    torch.testing.assert_close(gpu.mean.cpu(), cpu.mean, rtol=1e-3, atol=1e-4)
