"""Signal models and the batched fitter against autograd, scipy's curve_fit and known truth."""

import threading

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

from qmri_models.device import torch_device
from qmri_models.fitting.levenberg_marquardt import fit_pixels
from qmri_models.fitting.maps import fit_maps, signal_mask
from qmri_models.interrupt import Interrupted, interruptible
from qmri_models.protocols import IR_TI_MS, MOLLI_TI_MS, T2PREP_TE_MS
from qmri_models.signal_models import MODELS, MolliModel, signal_model

SR_TS_MS = (100.0, 300.0, 600.0, 1000.0, 1500.0, 2500.0, 4000.0)


def random_parameters(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``n`` plausible parameter vectors of a model. Shape `(n, n_params)`."""
    amplitude = rng.uniform(0.5, 1.0, n)
    if name == "molli":
        return np.stack([amplitude, amplitude * rng.uniform(1.8, 1.98, n), rng.uniform(300.0, 2000.0, n)], -1)
    if name == "inversion_recovery":
        return np.stack([amplitude, rng.uniform(1.8, 2.0, n), rng.uniform(200.0, 2000.0, n)], -1)
    if name == "t2prep":
        return np.stack([amplitude, rng.uniform(30.0, 200.0, n)], -1)
    if name == "t2prep_offset":
        return np.stack([amplitude, rng.uniform(30.0, 100.0, n), rng.uniform(0.01, 0.05, n)], -1)
    return np.stack([amplitude, rng.uniform(300.0, 2000.0, n)], -1)


TIMES = {
    "molli": MOLLI_TI_MS,
    "inversion_recovery": IR_TI_MS,
    "t2prep": T2PREP_TE_MS,
    "t2prep_offset": T2PREP_TE_MS,
    "saturation_recovery": SR_TS_MS,
}


def test_every_model_has_test_times() -> None:
    assert set(TIMES) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jacobian_matches_autograd(name: str) -> None:
    model = MODELS[name]
    times = torch.tensor(TIMES[name], dtype=torch.float64)
    params = torch.tensor(random_parameters(name, 5, np.random.default_rng(1)))
    for p in params:
        expected = torch.autograd.functional.jacobian(lambda q: model.signal(q, times), p)
        torch.testing.assert_close(model.jacobian(p, times), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_equals_curve_fit_pixel_by_pixel(name: str) -> None:
    """Same optimum as scipy's curve_fit with sigma = 1/sqrt(w): parameters and SDs within 0.1%."""
    rng = np.random.default_rng(2)
    model = MODELS[name]
    times = np.asarray(TIMES[name])
    n = 64  # an 8x8 image
    truth = random_parameters(name, n, rng)
    clean = model.signal(torch.tensor(truth), torch.tensor(times)).numpy()
    data = clean + rng.normal(0.0, 0.01, clean.shape)
    weights = rng.uniform(0.5, 2.0, clean.shape)
    fit = fit_pixels(model, torch.tensor(data), torch.tensor(times), weights=torch.tensor(weights))
    assert bool(fit.converged.all())

    def f(t: np.ndarray, *q: float) -> np.ndarray:
        return model.signal(torch.tensor(q)[None], torch.tensor(t))[0].numpy()

    for i in range(n):
        popt, pcov = curve_fit(f, times, data[i], p0=truth[i], sigma=1 / np.sqrt(weights[i]), maxfev=20000)
        ours = fit.params[i].numpy()
        scale = np.maximum(np.abs(popt), 0.05 * np.abs(popt).max())  # the offset may be near zero
        np.testing.assert_array_less(np.abs(ours - popt) / scale, 1e-3)
        np.testing.assert_allclose(fit.sd[i].numpy(), np.sqrt(np.diag(pcov)), rtol=1e-3)


def test_absolute_weights_give_the_inverse_information_as_covariance() -> None:
    rng = np.random.default_rng(3)
    model = MODELS["t2prep"]
    times = np.asarray(T2PREP_TE_MS)
    truth = random_parameters("t2prep", 16, rng) * np.array([1000.0, 1.0])  # a gain the covariance must follow
    sigma = rng.uniform(5.0, 20.0, (16, times.size))
    data = model.signal(torch.tensor(truth), torch.tensor(times)).numpy() + rng.normal(0.0, 1.0, sigma.shape) * sigma
    fit = fit_pixels(
        model, torch.tensor(data), torch.tensor(times), weights=torch.tensor(sigma**-2.0), absolute_weights=True
    )

    def f(t: np.ndarray, *q: float) -> np.ndarray:
        return model.signal(torch.tensor(q)[None], torch.tensor(t))[0].numpy()

    for i in range(16):
        popt, pcov = curve_fit(f, times, data[i], p0=truth[i], sigma=sigma[i], absolute_sigma=True)
        np.testing.assert_allclose(fit.params[i].numpy(), popt, rtol=1e-4)
        np.testing.assert_allclose(fit.sd[i].numpy(), np.sqrt(np.diag(pcov)), rtol=1e-3)


def test_zero_weight_ignores_a_corrupted_phase() -> None:
    model = MODELS["molli"]
    times = torch.tensor(MOLLI_TI_MS, dtype=torch.float64)
    truth = torch.tensor([[1.0, 1.96, 1200.0]], dtype=torch.float64)
    data = model.signal(truth, times).clone()
    data[0, 3] += 5.0
    weights = torch.ones(len(MOLLI_TI_MS), dtype=torch.float64)
    weights[3] = 0.0
    fit = fit_pixels(model, data, times, weights=weights)
    torch.testing.assert_close(fit.params, truth, rtol=1e-4, atol=1e-6)


def test_bounds_hold() -> None:
    model = MODELS["t2prep"]
    times = torch.tensor(T2PREP_TE_MS, dtype=torch.float64)
    rising = torch.linspace(0.5, 1.0, len(T2PREP_TE_MS), dtype=torch.float64)[None]  # best T2 would be negative
    fit = fit_pixels(model, rising, times)
    lower, upper = model.bounds(rising)
    assert bool(((fit.params >= lower) & (fit.params <= upper)).all())
    assert float(fit.params[0, 1]) == upper[1]  # T2 held on its bound, M0 fitted, and the fit ends
    assert bool(fit.converged.all())
    assert fit.iterations < 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": torch.ones(3)}, "weights must have shape"),
        ({"weights": -torch.ones(8)}, "non-negative"),
    ],
)
def test_fit_argument_errors(kwargs: dict[str, torch.Tensor], match: str) -> None:
    data = torch.ones((4, 8), dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        fit_pixels(MODELS["molli"], data, torch.tensor(MOLLI_TI_MS), **kwargs)


class StopOnJacobian(MolliModel):
    """MOLLI that sets a stop event on its n-th Jacobian (one per Levenberg-Marquardt iteration) and counts them."""

    def __init__(self, stop: threading.Event, at_call: int) -> None:
        self.stop, self.at_call, self.calls = stop, at_call, 0

    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at_call:
            self.stop.set()
        return super().jacobian(params, times_ms)


def test_fit_stops_at_the_next_iteration_once_interrupted() -> None:
    """The event set during iteration 3 stops the fit before iteration 4: no 4th Jacobian, Interrupted raised."""
    rng = np.random.default_rng(6)
    times = torch.tensor(MOLLI_TI_MS, dtype=torch.float64)
    truth = torch.tensor(random_parameters("molli", 256, rng))
    data = MODELS["molli"].signal(truth, times) + torch.tensor(rng.normal(0.0, 0.01, (256, len(MOLLI_TI_MS))))
    stop = threading.Event()
    model = StopOnJacobian(stop, at_call=3)
    with interruptible(stop), pytest.raises(Interrupted):
        fit_pixels(model, data, times, tolerance=0.0, max_iterations=1000)
    assert model.calls == 3
    unwatched = StopOnJacobian(threading.Event(), at_call=3)  # outside interruptible the event changes nothing
    assert fit_pixels(unwatched, data, times).converged.all()
    assert unwatched.calls > 3


def test_fit_needs_more_phases_than_parameters() -> None:
    with pytest.raises(ValueError, match="needs more phases"):
        fit_pixels(MODELS["molli"], torch.ones((2, 3)), torch.tensor([1.0, 2.0, 3.0]))


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: molli, t2prep"):
        signal_model("t3")


@pytest.mark.parametrize(("name", "t1_ms"), [("molli", 900.0), ("molli", 350.0), ("inversion_recovery", 150.0)])
def test_polarity_restoration_recovers_t1_from_magnitude(name: str, t1_ms: float) -> None:
    """Noise-free magnitude images of a signed model: the fit finds the exact T1 whatever the null point."""
    model = MODELS[name]
    times = np.asarray(TIMES[name])
    t1 = np.full((4, 4), t1_ms)
    if name == "molli":
        signed = model.signal_array(times, a=np.ones_like(t1), b=1.96 * np.ones_like(t1), t1_star_ms=t1 / 0.96)
    else:
        signed = model.signal_array(times, pd=np.ones_like(t1), b=1.9 * np.ones_like(t1), t1_ms=t1)
    images = np.abs(signed) * np.exp(1j * 0.7)
    maps = fit_maps(model, images, times, mask=np.ones((4, 4), bool))
    np.testing.assert_allclose(maps.values["T1"], t1_ms, rtol=1e-5)
    assert maps.converged.all()
    assert maps.units["T1"] == "ms"


def test_signal_mask_and_empty_fit() -> None:
    images = np.zeros((8, 6, 6), np.complex64)
    images[:, 2:4, 2:4] = 1.0
    mask = signal_mask(images, 0.1)
    assert mask.sum() == 4
    empty = fit_maps(MODELS["molli"], images, np.asarray(MOLLI_TI_MS), mask=np.zeros((6, 6), bool))
    assert set(empty.values) == {"T1", "T1star", "A", "B"}
    assert not empty.values["T1"].any()


def test_torch_device_names() -> None:
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        torch_device("gpu0")


@pytest.mark.cuda
def test_cuda_fit_equals_cpu_fit() -> None:
    rng = np.random.default_rng(5)
    images = rng.uniform(0.2, 1.0, (8, 32, 32)) * np.asarray(MOLLI_TI_MS)[:, None, None] / 4251.0
    cpu = fit_maps(MODELS["molli"], images, np.asarray(MOLLI_TI_MS), device="cpu")
    gpu = fit_maps(MODELS["molli"], images, np.asarray(MOLLI_TI_MS), device="cuda")
    np.testing.assert_allclose(gpu.values["T1"], cpu.values["T1"], rtol=1e-5)
