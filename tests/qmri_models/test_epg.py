"""The vectorised FISP EPG against blochsim, an isochromat simulation, closed forms, and its own truncation."""

import math

import blochsim
import numpy as np
import pytest
import torch

from qmri_models.mrf.epg import N_STATES, fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule, jiang_schedule

T1_MS = (300.0, 800.0, 1200.0, 2500.0, 4000.0)
T2_MS = (30.0, 60.0, 100.0, 400.0, 2000.0)

# blochsim 0.0.14 converts a tensor that requires grad to a float inside its accelerator (its own warning).
blochsim_warning = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")


def tissues(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(T1_MS, dtype=dtype), torch.tensor(T2_MS, dtype=dtype)


def with_te(schedule: FispSchedule, te_ms: float) -> FispSchedule:
    return FispSchedule(schedule.flip_angles_deg, schedule.tr_ms, te_ms, schedule.ti_ms)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(ours - reference, dim=-1) / torch.linalg.vector_norm(reference, dim=-1)


def blochsim_signal(schedule: FispSchedule, n_states: int, inversion_efficiency: float = 1.0) -> torch.Tensor:
    t1, t2 = tissues()
    signal = blochsim.mrf_sim(
        np.asarray(schedule.flip_angles_deg),
        np.asarray(schedule.tr_ms),
        t1,
        t2,
        TI=schedule.ti_ms,
        inv_efficiency=inversion_efficiency,
        states=n_states,
        device="cpu",
    )
    return torch.as_tensor(signal).to(torch.complex128)


@blochsim_warning
@pytest.mark.parametrize("inversion_efficiency", [1.0, 0.9])
def test_matches_blochsim_mrf_sim(inversion_efficiency: float) -> None:
    # blochsim samples right after the excitation (its FISP readout has no TE) and waits the whole TR after it, so
    # it is our schedule with te_ms = 0; both keep the same orders. blochsim returns complex64: agreement to ~1e-6.
    schedule = with_te(jiang_schedule(150), 0.0)
    reference = blochsim_signal(schedule, N_STATES, inversion_efficiency)
    ours = fisp_fingerprints(*tissues(), schedule, inversion_efficiency=inversion_efficiency)
    assert relative_error(ours, reference).max() < 2e-6


@blochsim_warning
def test_te_decays_the_blochsim_signal_by_t2() -> None:
    # Sampling at TE instead of right after the pulse only multiplies every frame by exp(-TE / T2): TR is measured
    # excitation to excitation, so TE moves nothing else.
    schedule = jiang_schedule(120)
    reference = blochsim_signal(with_te(schedule, 0.0), N_STATES)
    ours = fisp_fingerprints(*tissues(), schedule)
    decay = torch.exp(-schedule.te_ms / tissues()[1])[:, None]
    assert relative_error(ours, reference * decay).max() < 2e-6


def isochromat_signal(schedule: FispSchedule, t1_ms: float, t2_ms: float, n_spins: int) -> np.ndarray:
    """Bloch simulation of spins whose unbalanced gradient turns them by 2 pi j / n_spins each TR; mean at TE."""
    dephasing = 2.0 * np.pi * np.arange(n_spins) / n_spins
    mx, my, mz = np.zeros(n_spins), np.zeros(n_spins), np.full(n_spins, -1.0)
    e1_ti = math.exp(-schedule.ti_ms / t1_ms)
    mz = mz * e1_ti + 1.0 - e1_ti
    signal = []
    for flip_deg, tr_ms in zip(schedule.flip_angles_deg, schedule.tr_ms, strict=True):
        a = math.radians(flip_deg)
        # rotation about y: +Mz goes to +Mx, the positive real signal
        mx, mz = math.cos(a) * mx + math.sin(a) * mz, -math.sin(a) * mx + math.cos(a) * mz
        echo = math.exp(-schedule.te_ms / t2_ms)
        signal.append(np.mean(mx + 1j * my) * echo)
        e1, e2 = math.exp(-tr_ms / t1_ms), math.exp(-tr_ms / t2_ms)
        transverse = (mx + 1j * my) * e2 * np.exp(1j * dephasing)
        mx, my, mz = transverse.real, transverse.imag, mz * e1 + 1.0 - e1
    return np.asarray(signal)


@pytest.mark.parametrize(("t1_ms", "t2_ms"), [(800.0, 60.0), (2500.0, 400.0), (4000.0, 2000.0)])
def test_matches_an_isochromat_simulation(t1_ms: float, t2_ms: float) -> None:
    # n spins evenly spread over one dephasing cycle resolve orders up to n / 2, so 2 frames + 1 spins see every order
    # a train can reach: they equal the untruncated EPG (n_states = frames + 1) to rounding, while fewer spins alias
    # high orders into F0 and differ by more.
    schedule = jiang_schedule(100)
    ours = fisp_fingerprints(
        torch.tensor([t1_ms], dtype=torch.float64),
        torch.tensor([t2_ms], dtype=torch.float64),
        schedule,
        n_states=schedule.n_frames + 1,
    )[0].numpy()
    exact = isochromat_signal(schedule, t1_ms, t2_ms, 2 * schedule.n_frames + 1)
    assert np.linalg.norm(ours - exact) / np.linalg.norm(exact) < 1e-12
    coarse = isochromat_signal(schedule, t1_ms, t2_ms, 16)
    assert np.linalg.norm(ours - coarse) / np.linalg.norm(exact) > 1e-6


@pytest.mark.parametrize(
    ("flip_deg", "t1_ms", "t2_ms"), [(30.0, 500.0, 50.0), (60.0, 800.0, 100.0), (10.0, 300.0, 200.0)]
)
def test_constant_flip_train_reaches_the_fisp_steady_state(flip_deg: float, t1_ms: float, t2_ms: float) -> None:
    # The closed-form gradient-spoiled SSFP-FID (FISP) steady state (Zur et al. 1988; Hänicke and Vogel 2003):
    # tan(a/2) [1 - (E1 - cos a)(1 - E2^2) / sqrt(p^2 - q^2)], p = 1 - E1 cos a - E2^2 (E1 - cos a),
    # q = E2 (1 - E1)(1 + cos a); the signal right after the pulse.
    tr_ms = 10.0
    schedule = FispSchedule([flip_deg] * 1500, [tr_ms] * 1500, 0.0, 18.0)
    ours = fisp_fingerprints(
        torch.tensor([t1_ms], dtype=torch.float64), torch.tensor([t2_ms], dtype=torch.float64), schedule, n_states=200
    )
    a, e1, e2 = math.radians(flip_deg), math.exp(-tr_ms / t1_ms), math.exp(-tr_ms / t2_ms)
    p = 1.0 - e1 * math.cos(a) - e2**2 * (e1 - math.cos(a))
    q = e2 * (1.0 - e1) * (1.0 + math.cos(a))
    steady = math.tan(a / 2) * (1.0 - (e1 - math.cos(a)) * (1.0 - e2**2) / math.sqrt(p**2 - q**2))
    assert ours[0, -1].real.item() == pytest.approx(steady, rel=1e-9)
    assert ours[0, -1].imag.item() == 0.0


def test_ninety_degrees_with_long_tr_recovers_m0() -> None:
    # TR = 20 T1: each 90 degree pulse sees fully recovered M0 = 1 (the first one the inverted -1), and T2 << TR
    # leaves no transverse memory.
    schedule = FispSchedule([90.0] * 5, [20_000.0] * 5, 0.0, 0.0)
    signal = fisp_fingerprints(torch.tensor([1000.0]), torch.tensor([100.0]), schedule)[0]
    assert signal[0].real.item() == pytest.approx(-1.0, abs=1e-6)
    torch.testing.assert_close(signal[1:].real, torch.ones(4), atol=1e-6, rtol=0.0)


def test_default_orders_truncation_error() -> None:
    # Against the untruncated EPG (orders 0..frames) on the default 1000-frame schedule. High orders matter for long
    # T2 only: measured 0.0, 3e-8, 3e-6, 1.6e-3, 1.6e-2 of the norm for the five tissues, short to long T2.
    schedule = jiang_schedule()
    t1, t2 = tissues()
    exact = fisp_fingerprints(t1, t2, schedule, n_states=schedule.n_frames + 1)
    truncated = fisp_fingerprints(t1, t2, schedule)
    errors = relative_error(truncated, exact)
    assert errors[:3].max() < 1e-5
    assert errors[3] < 3e-3
    assert errors[4] < 2.5e-2


def test_shapes_dtype_and_device_follow_the_inputs() -> None:
    schedule = jiang_schedule(20)
    signal = fisp_fingerprints(torch.full((2, 3), 1000.0), torch.full((2, 3), 80.0), schedule)
    assert signal.shape == (2, 3, 20)
    assert signal.dtype == torch.complex64
    assert bool((signal.imag == 0).all())
    double = fisp_fingerprints(
        torch.tensor([1000.0], dtype=torch.float64), torch.tensor([80.0], dtype=torch.float64), schedule
    )
    assert double.dtype == torch.complex128
    torch.testing.assert_close(signal[1, 2], double[0].to(torch.complex64), rtol=1e-5, atol=1e-6)
    assert fisp_fingerprints(torch.zeros(0), torch.zeros(0), schedule).shape == (0, 20)


def test_chunks_agree_with_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = jiang_schedule(50)
    t1 = torch.linspace(200.0, 3000.0, 37)
    t2 = t1 / 8
    whole = fisp_fingerprints(t1, t2, schedule)
    monkeypatch.setattr("qmri_models.mrf.epg._CHUNK_ATOMS", 5)
    torch.testing.assert_close(fisp_fingerprints(t1, t2, schedule), whole, rtol=0.0, atol=0.0)


@pytest.mark.parametrize(
    ("t1", "t2", "options", "message"),
    [
        (torch.ones(3), torch.ones(2), {}, "one shape"),
        (torch.ones(3, dtype=torch.float16), torch.ones(3, dtype=torch.float16), {}, "float32 or float64"),
        (torch.tensor([100.0, -1.0]), torch.tensor([10.0, 10.0]), {}, "positive"),
        (torch.ones(2), torch.ones(2), {"n_states": 0}, "n_states"),
        (torch.ones(2), torch.ones(2), {"inversion_efficiency": 1.5}, "inversion_efficiency"),
    ],
)
def test_bad_inputs_are_refused(t1: torch.Tensor, t2: torch.Tensor, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fisp_fingerprints(t1, t2, jiang_schedule(10), **options)


@pytest.mark.cuda
def test_cuda_equals_cpu() -> None:
    schedule = jiang_schedule(300)
    t1 = torch.linspace(200.0, 4000.0, 5000)
    t2 = t1 / 10
    cpu = fisp_fingerprints(t1, t2, schedule)
    gpu = fisp_fingerprints(t1.cuda(), t2.cuda(), schedule)
    assert gpu.device.type == "cuda"
    assert relative_error(gpu.cpu(), cpu).max() < 1e-5
