"""Risk-controlling calibration: the bounds against their closed forms, scipy and a direct WSR reference, the
coverage guarantee on synthetic data with known quantiles, monotonicity of the chosen scale, the interval losses
against a direct count, the pinball loss against its formula, and the ``Calibration`` record's JSON round trip.

The synthetic law (``draw_items``): each item (a "slice") has ``PIXELS`` pixels, a value per pixel, a per-pixel SD
``sd`` the uncertainty method reports, and a per-item factor ``kappa`` (drawn from ``KAPPAS``) by which the true
spread differs from the reported one, as an error head is off by slice. The target is ``value + kappa * sd * noise``
with standard normal noise (symmetric family, offsets ``sd``) or standard Gumbel noise (quantile family, offsets the
Gumbel's true alpha/2 and 1 - alpha/2 quantiles times ``sd``). Given kappa every pixel misses the interval with a
known probability, so the population risk at any lambda is exact (``true_risk``).
"""

import json
import math
from collections.abc import Callable
from functools import partial
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom, gumbel_r, norm

from qmri_models.calibration.bounds import (
    BOUND_NAMES,
    MEAN_BOUNDS,
    BoundName,
    bentkus_ucb,
    hoeffding_bentkus_ucb,
    hoeffding_kl_ucb,
    hoeffding_ucb,
    relative_entropy,
    upper_confidence_bound,
    upper_confidence_bound_of_losses,
    wsr_ucb,
)
from qmri_models.calibration.intervals import miscoverage_losses, required_scale, scaled_interval
from qmri_models.calibration.pinball import pinball_loss
from qmri_models.calibration.risk_control import Calibration, calibrate_interval_scale, calibrate_scale

ALPHA = 0.1
DELTA = 0.1
PIXELS = 48
KAPPAS = np.array([0.7, 0.85, 1.0, 1.2, 1.5])
GUMBEL_LOW = float(gumbel_r.ppf(ALPHA / 2))
GUMBEL_HIGH = float(gumbel_r.ppf(1 - ALPHA / 2))
LAMBDAS = np.round(np.arange(0.0, 6.0 + 1e-9, 0.02), 2)
FAMILIES = ("symmetric", "quantile")
N_DRAWS = 500
FALSE_ALARM = 1e-3
HOEFFDING_MIN_N = math.ceil(math.log(1 / DELTA) / (2 * ALPHA**2))
"""Below this many items Hoeffding's margin alone exceeds alpha: it cannot certify alpha whatever the data."""


def draw_items(
    rng: np.random.Generator, n_items: int, family: str, pixels: int = PIXELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return value, target, lower and upper offsets and mask of ``n_items`` items. Shapes `(n_items, pixels)`."""
    shape = (n_items, pixels)
    value = rng.uniform(500.0, 1500.0, shape)
    sd = value * rng.uniform(0.02, 0.10, shape)
    kappa = rng.choice(KAPPAS, (n_items, 1))
    mask = rng.random(shape) < 0.75
    mask[:, 0] = True
    if family == "symmetric":
        return value, value + kappa * sd * rng.standard_normal(shape), sd, sd, mask
    return value, value + kappa * sd * rng.gumbel(size=shape), -GUMBEL_LOW * sd, GUMBEL_HIGH * sd, mask


def true_risk(lambdas: np.ndarray, family: str) -> np.ndarray:
    """Return the exact population risk (expected fraction of mask pixels outside) at each lambda."""
    scaled = np.asarray(lambdas, dtype=np.float64)[..., None] / KAPPAS
    if family == "symmetric":
        miss = 2.0 * norm.sf(scaled)
    else:
        miss = gumbel_r.cdf(scaled * GUMBEL_LOW) + gumbel_r.sf(scaled * GUMBEL_HIGH)
    return miss.mean(axis=-1)


def item_losses(rng: np.random.Generator, n_items: int, family: str, pixels: int = PIXELS) -> np.ndarray:
    """Return the miscoverage losses of ``n_items`` fresh items on ``LAMBDAS``. Shape `(n_items, LAMBDAS.size)`."""
    value, target, lower, upper, mask = draw_items(rng, n_items, family, pixels)
    return miscoverage_losses(required_scale(value, target, lower, upper), LAMBDAS, mask=mask)


def guarantee_figures(
    family: str, bounds: tuple[BoundName, ...], n_range: tuple[int, int], pixels: int, seed: int
) -> dict[str, dict[str, float]]:
    """Calibrate on ``N_DRAWS`` independent calibration sets; return, per bound, how the chosen scales fare.

    Each draw has a uniform random number of items in ``n_range``, each of ``pixels`` pixels. Per bound: the fraction
    of draws whose exact test risk exceeds alpha, the mean test risk and the mean scale. ``"empirical"`` is the rule
    without a bound (the smallest lambda whose calibration risk is <= alpha), the control that shows the check can
    fail.
    """
    rng = np.random.default_rng(seed)
    risk_curve = true_risk(LAMBDAS, family)
    chosen: dict[str, list[float]] = {name: [] for name in (*bounds, "empirical")}
    for _ in range(N_DRAWS):
        losses = item_losses(rng, int(rng.integers(n_range[0], n_range[1] + 1)), family, pixels)
        for bound in bounds:
            chosen[bound].append(calibrate_scale(losses, LAMBDAS, alpha=ALPHA, delta=DELTA, bound=bound).scale)
        chosen["empirical"].append(LAMBDAS[np.argmax(losses.mean(axis=0) <= ALPHA)])
    figures: dict[str, dict[str, float]] = {}
    for name, scales in chosen.items():
        risk = risk_curve[np.searchsorted(LAMBDAS, scales)]
        figures[name] = {
            "violation_fraction": float(np.mean(risk > ALPHA)),
            "mean_test_risk": float(risk.mean()),
            "mean_scale": float(np.mean(scales)),
        }
    return figures


def allowed_violations() -> float:
    """Return the largest violation fraction a correct procedure exceeds with probability below ``FALSE_ALARM``.

    With the guarantee, each draw violates independently with probability at most delta, so the count of violating
    draws is stochastically at most Binomial(N_DRAWS, delta); its 1 - FALSE_ALARM quantile is the slack.
    """
    return float(binom.ppf(1 - FALSE_ALARM, N_DRAWS, DELTA)) / N_DRAWS


# --- the guarantee ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_true_risk_matches_a_large_fresh_test_set(family: str) -> None:
    """The exact risk the guarantee test judges by is what 20000 fresh items score, within 4 standard errors."""
    losses = item_losses(np.random.default_rng(10), 20000, family)
    standard_error = losses.std(axis=0) / math.sqrt(losses.shape[0])
    deviation = np.abs(losses.mean(axis=0) - true_risk(LAMBDAS, family))
    assert (deviation <= 4 * standard_error + 1e-12).all()
    oracle = LAMBDAS[np.argmax(true_risk(LAMBDAS, family) <= ALPHA)]
    assert 1.0 < oracle < 2.0


GUARANTEE_CASES = [
    ("symmetric", ("bentkus", "hoeffding_bentkus"), (50, 200), PIXELS, 1),
    ("quantile", ("bentkus", "hoeffding_bentkus"), (50, 200), PIXELS, 2),
    ("symmetric", ("hoeffding",), (150, 200), PIXELS, 3),
    ("quantile", ("hoeffding",), (150, 200), PIXELS, 4),
    ("symmetric", ("bentkus", "hoeffding_bentkus"), (50, 200), 1, 5),
    ("quantile", ("bentkus", "hoeffding_bentkus"), (50, 200), 1, 6),
    ("symmetric", ("wsr", "hoeffding_bentkus"), (50, 200), PIXELS, 7),
    ("quantile", ("wsr", "hoeffding_bentkus"), (50, 200), PIXELS, 8),
    ("quantile", ("wsr",), (50, 200), 1, 9),
]
"""(family, bounds, n range, pixels per item, seed): slices of PIXELS pixels, and one-pixel items whose 0/1 losses
are the hardest case for a bound on [0, 1]. Hoeffding from 150 items (``HOEFFDING_MIN_N``)."""


@pytest.mark.parametrize(("family", "bounds", "n_range", "pixels", "seed"), GUARANTEE_CASES)
def test_risk_is_controlled_in_at_least_1_minus_delta_of_calibration_draws(
    family: str, bounds: tuple[BoundName, ...], n_range: tuple[int, int], pixels: int, seed: int
) -> None:
    """P(test risk > alpha) <= delta over calibration draws; not by covering everything (the test risk stays a
    fair share of alpha); the bound-free rule fails it, so the check has power."""
    figures = guarantee_figures(family, bounds, n_range, pixels, seed)
    for name in bounds:
        assert figures[name]["violation_fraction"] <= allowed_violations(), (name, figures)
        assert figures[name]["mean_test_risk"] > 0.15 * ALPHA, (name, figures)
    if "bentkus" in bounds:
        assert figures["hoeffding_bentkus"]["mean_scale"] <= figures["bentkus"]["mean_scale"], figures
    if "wsr" in bounds and pixels > 1:  # slice losses vary less than 0/1 ones: WSR uses it, the mean bounds cannot
        assert figures["wsr"]["mean_scale"] < figures["hoeffding_bentkus"]["mean_scale"], figures
    assert figures["empirical"]["violation_fraction"] > 0.3, figures


def test_hoeffding_cannot_certify_alpha_below_its_minimum_n() -> None:
    losses = np.zeros((HOEFFDING_MIN_N - 1, LAMBDAS.size))
    with pytest.raises(ValueError, match=rf"alpha=0.1, delta=0.1 with n={HOEFFDING_MIN_N - 1} items.*0\.10"):
        calibrate_scale(losses, LAMBDAS, alpha=ALPHA, delta=DELTA, bound="hoeffding")
    zero = np.zeros((HOEFFDING_MIN_N, 3))
    assert calibrate_scale(zero, [1.0, 2.0, 3.0], alpha=ALPHA, delta=DELTA, bound="hoeffding").scale == 1.0


# --- monotonicity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_losses_are_non_increasing_in_lambda_and_match_a_direct_count(family: str) -> None:
    value, target, lower, upper, mask = draw_items(np.random.default_rng(5), 30, family)
    losses = miscoverage_losses(required_scale(value, target, lower, upper), LAMBDAS, mask=mask)
    assert (np.diff(losses, axis=1) <= 0).all()
    for index in range(0, LAMBDAS.size, 25):
        low, high = scaled_interval(value, lower, upper, LAMBDAS[index])
        outside = (target < low) | (target > high)
        direct = (outside & mask).sum(axis=1) / mask.sum(axis=1)
        np.testing.assert_allclose(losses[:, index], direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bound", BOUND_NAMES)
def test_chosen_scale_is_non_increasing_in_alpha(bound: BoundName) -> None:
    """Same calibration set, growing alpha: the chosen scale never grows, and falls across the range."""
    losses = item_losses(np.random.default_rng(6), 200, "quantile")
    scales = [
        calibrate_scale(losses, LAMBDAS, alpha=alpha, delta=DELTA, bound=bound).scale
        for alpha in np.linspace(0.08, 0.3, 12)
    ]
    assert (np.diff(scales) <= 0).all()
    assert scales[-1] < scales[0]


@pytest.mark.parametrize("bound", BOUND_NAMES)
def test_chosen_scale_is_non_increasing_in_n_at_a_fixed_empirical_risk(bound: BoundName) -> None:
    """Repeating a calibration set keeps its risk curve and multiplies n: the bound and the scale never grow.

    (For nested sets, adding items can raise the empirical risk, so the scale can grow: not a property to test.)
    """
    losses = item_losses(np.random.default_rng(7), 120, "symmetric")
    scales = [
        calibrate_scale(np.tile(losses, (copies, 1)), LAMBDAS, alpha=ALPHA, delta=DELTA, bound=bound).scale
        for copies in (1, 2, 4, 8)
    ]
    assert (np.diff(scales) <= 0).all()
    assert scales[-1] < scales[0]
    tiled = np.tile(losses[:, 60:61], (8, 1))
    bounds = [upper_confidence_bound_of_losses(tiled[:n], DELTA, bound=bound)[0] for n in (120, 240, 480, 960)]
    assert (np.diff(bounds) < 0).all()


def test_mean_chosen_scale_falls_with_n_towards_the_oracle_for_a_fixed_law() -> None:
    """Fresh sets from one law: the mean scale over 100 draws falls as n grows (each step beyond 3 standard errors)
    and stays above the oracle scale, the smallest with true risk <= alpha."""
    rng = np.random.default_rng(8)
    oracle = LAMBDAS[np.argmax(true_risk(LAMBDAS, "symmetric") <= ALPHA)]
    means, errors = [], []
    for n in (50, 100, 200, 400):
        scales = [
            calibrate_scale(item_losses(rng, n, "symmetric"), LAMBDAS, alpha=ALPHA, delta=DELTA).scale
            for _ in range(100)
        ]
        means.append(np.mean(scales))
        errors.append(np.std(scales) / math.sqrt(len(scales)))
    for (mean_a, error_a), (mean_b, error_b) in pairwise(zip(means, errors, strict=True)):
        assert mean_a - mean_b > 3 * math.hypot(error_a, error_b), means
    assert min(means) > oracle


# --- the bounds ------------------------------------------------------------------------------------------------------

RISKS = np.array([0.0, 0.003, 0.02, 0.05, 0.1, 0.237, 0.5, 0.9, 0.999, 1.0])
NS = (1, 7, 50, 200, 1000)


@pytest.mark.parametrize("n", NS)
def test_hoeffding_is_its_closed_form(n: int) -> None:
    expected = np.minimum(1.0, RISKS + math.sqrt(math.log(1 / DELTA) / (2 * n)))
    np.testing.assert_allclose(hoeffding_ucb(RISKS, n, DELTA), expected, rtol=1e-15)
    assert float(hoeffding_ucb(0.05, 100, 0.1)) == pytest.approx(0.05 + 0.1072983, abs=1e-7)


def _direct_root(p_value: Callable[[float], float], mean_risk: float) -> float:
    """Return the R in [R_hat, 1] where ``p_value(R) = delta``, by brentq (1 if the p-value stays above delta)."""
    if p_value(1.0 - 1e-12) >= DELTA:
        return 1.0
    return brentq(lambda r: p_value(r) - DELTA, mean_risk, 1.0 - 1e-12, xtol=1e-14)


def _hoeffding_p(mean_risk: float, n: int, risk: float) -> float:
    a = min(mean_risk, risk)
    entropy = (a * math.log(a / risk) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - risk))
    return math.exp(-n * entropy)


def _bentkus_p(mean_risk: float, n: int, risk: float) -> float:
    return math.e * float(binom.cdf(math.ceil(n * mean_risk - 1e-9), n, risk))


def _hoeffding_bentkus_p(mean_risk: float, n: int, risk: float) -> float:
    return min(_hoeffding_p(mean_risk, n, risk), _bentkus_p(mean_risk, n, risk))


@pytest.mark.parametrize("n", NS)
def test_bentkus_kl_and_hoeffding_bentkus_match_a_direct_scipy_inversion(n: int) -> None:
    for mean_risk in map(float, RISKS[RISKS < 1.0]):
        hoeffding_kl = _direct_root(partial(_hoeffding_p, mean_risk, n), mean_risk)
        bentkus = _direct_root(partial(_bentkus_p, mean_risk, n), mean_risk)
        both = _direct_root(partial(_hoeffding_bentkus_p, mean_risk, n), mean_risk)
        assert float(hoeffding_kl_ucb(mean_risk, n, DELTA)) == pytest.approx(hoeffding_kl, abs=1e-10)
        assert float(bentkus_ucb(mean_risk, n, DELTA)) == pytest.approx(bentkus, abs=1e-10)
        assert float(hoeffding_bentkus_ucb(mean_risk, n, DELTA)) == pytest.approx(both, abs=1e-10)
    assert float(hoeffding_kl_ucb(0.0, n, DELTA)) == pytest.approx(1 - DELTA ** (1 / n), rel=1e-12)
    assert float(bentkus_ucb(0.0, n, DELTA)) == pytest.approx(1 - (DELTA / math.e) ** (1 / n), rel=1e-10)
    assert all(float(upper_confidence_bound(1.0, n, DELTA, bound=name)) == 1.0 for name in MEAN_BOUNDS)
    assert all(upper_confidence_bound_of_losses(np.ones((n, 1)), DELTA, bound=name)[0] == 1.0 for name in BOUND_NAMES)


@pytest.mark.parametrize("n", NS)
def test_hoeffding_bentkus_is_never_above_its_parts_nor_hoeffding(n: int) -> None:
    for delta in (0.01, 0.1, 0.5):
        hb = hoeffding_bentkus_ucb(RISKS, n, delta)
        assert (hb <= hoeffding_kl_ucb(RISKS, n, delta)).all()
        assert (hb <= bentkus_ucb(RISKS, n, delta)).all()
        assert (hoeffding_kl_ucb(RISKS, n, delta) <= hoeffding_ucb(RISKS, n, delta) + 1e-15).all()
        assert (hb >= RISKS).all()
    assert float(hoeffding_bentkus_ucb(0.05, 100, DELTA)) < float(hoeffding_ucb(0.05, 100, DELTA)) - 0.04


@pytest.mark.parametrize("bound", tuple(MEAN_BOUNDS))
@pytest.mark.parametrize(("n", "mean"), [(30, 0.02), (30, 0.3), (200, 0.1), (500, 0.6)])
def test_each_bound_covers_a_bernoulli_mean_with_probability_1_minus_delta(
    bound: BoundName, n: int, mean: float
) -> None:
    """Exact over Binomial(n, mean) outcomes (0/1 losses, the hardest case for a bound on [0, 1])."""
    counts = np.arange(n + 1)
    below = upper_confidence_bound(counts / n, n, DELTA, bound=bound) < mean
    assert binom.pmf(counts, n, mean)[below].sum() <= DELTA


def test_relative_entropy_is_zero_on_the_diagonal_and_infinite_at_the_edge() -> None:
    np.testing.assert_allclose(relative_entropy([0.0, 0.3, 1.0], [0.0, 0.3, 1.0]), 0.0, atol=1e-15)
    assert float(relative_entropy(0.5, 1.0)) == np.inf
    assert float(relative_entropy(0.0, 0.5)) == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mean_risk": 0.1, "n": 0, "delta": 0.1}, "n .* must be an integer >= 1"),
        ({"mean_risk": 0.1, "n": True, "delta": 0.1}, "n .* must be an integer >= 1"),
        ({"mean_risk": 0.1, "n": 10, "delta": 1.0}, "delta must be in"),
        ({"mean_risk": [0.1, 1.2], "n": 10, "delta": 0.1}, r"mean_risk must be in \[0, 1\].*1\.2"),
        ({"mean_risk": np.nan, "n": 10, "delta": 0.1}, "mean_risk must be in"),
    ],
)
def test_bounds_reject_bad_inputs(kwargs: dict, match: str) -> None:
    for name in MEAN_BOUNDS:
        with pytest.raises(ValueError, match=match):
            upper_confidence_bound(**kwargs, bound=name)


def test_unknown_bound_is_named() -> None:
    with pytest.raises(ValueError, match="got 'chernoff'"):
        upper_confidence_bound(0.1, 10, 0.1, bound="chernoff")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="to bound a mean alone, got 'wsr'"):
        upper_confidence_bound(0.1, 10, 0.1, bound="wsr")


def wsr_reference(losses: np.ndarray, delta: float) -> float:
    """Return the Waudby-Smith-Ramdas bound of one column of losses, written out as Bates et al. 2021 give it.

    A loop over items and a root finder (scipy's brentq) on ``max_i K_i(R) - 1 / delta``, independent of the
    vectorised bisection under test.
    """
    n = len(losses)
    mu, sigma2, bets = [], [], []
    previous = 0.25
    for i in range(1, n + 1):
        bets.append(min(1.0, math.sqrt(2 * math.log(1 / delta) / (n * previous))))
        mu.append((0.5 + losses[:i].sum()) / (1 + i))
        sigma2.append((0.25 + sum((losses[j] - mu[j]) ** 2 for j in range(i))) / (1 + i))
        previous = sigma2[-1]

    def excess(risk: float) -> float:
        wealth, best = 1.0, 0.0
        for bet, loss in zip(bets, losses, strict=True):
            wealth *= 1 - bet * (loss - risk)
            best = max(best, wealth)
        return best - 1 / delta

    if excess(0.0) > 0:
        return max(0.0, float(losses.mean()))
    return max(brentq(excess, 0.0, 1.0, xtol=1e-12), float(losses.mean()))


@pytest.mark.parametrize("seed", range(4))
def test_wsr_matches_a_direct_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    losses = np.clip(rng.normal(rng.uniform(0.02, 0.3), rng.uniform(0.005, 0.1), (rng.integers(20, 120), 3)), 0, 1)
    expected = [wsr_reference(losses[:, k], DELTA) for k in range(3)]
    np.testing.assert_allclose(wsr_ucb(losses, DELTA), expected, atol=1e-9)


@pytest.mark.parametrize(("n", "mean", "spread"), [(30, 0.05, 0.02), (80, 0.07, 0.03), (200, 0.3, 0.2)])
def test_wsr_covers_the_mean_in_1_minus_delta_of_draws(n: int, mean: float, spread: float) -> None:
    """Beta-distributed losses of known mean, 4000 draws: the bound falls below the mean in at most delta of them
    (plus binomial slack at FALSE_ALARM), and it is tighter than Hoeffding-Bentkus when the losses vary little."""
    concentration = mean * (1 - mean) / spread**2 - 1
    rng = np.random.default_rng(n)
    draws = rng.beta(mean * concentration, (1 - mean) * concentration, (n, 4000))
    wsr = wsr_ucb(draws, DELTA)
    assert np.mean(wsr < mean) <= float(binom.ppf(1 - FALSE_ALARM, 4000, DELTA)) / 4000
    hb = hoeffding_bentkus_ucb(draws.mean(axis=0), n, DELTA)
    assert np.median(wsr) < np.median(hb)


# --- calibrate_scale and the intervals -------------------------------------------------------------------------------


def test_the_scan_stops_at_the_first_failure_from_the_top() -> None:
    """A lambda below a failing one is never chosen, even where its own bound passes (the guarantee needs it)."""
    losses = np.zeros((1000, 4))
    losses[:, 1] = 0.5
    for bound, zero_losses_bound in (
        ("hoeffding_bentkus", float(hoeffding_bentkus_ucb(0.0, 1000, DELTA))),
        ("wsr", float(wsr_ucb(np.zeros((1000, 1)), DELTA)[0])),
    ):
        calibration = calibrate_scale(losses, [1.0, 2.0, 3.0, 4.0], alpha=ALPHA, delta=DELTA, bound=bound)
        assert calibration.scale == 3.0
        assert calibration.risk == 0.0
        assert calibration.risk_ucb == pytest.approx(zero_losses_bound)


@pytest.mark.parametrize("family", FAMILIES)
def test_calibrate_interval_scale_scores_the_interval_it_returns(family: str) -> None:
    value, target, lower, upper, mask = draw_items(np.random.default_rng(9), 150, family)
    calibration = calibrate_interval_scale(
        value, target, lower, upper, LAMBDAS, alpha=ALPHA, delta=DELTA, bound="hoeffding_bentkus", mask=mask
    )
    assert calibration.n_items == 150
    low, high = scaled_interval(value, lower, upper, calibration.scale)
    direct = (((target < low) | (target > high)) & mask).sum(axis=1) / mask.sum(axis=1)
    assert calibration.risk == pytest.approx(direct.mean(), abs=1e-12)
    assert calibration.risk_ucb == pytest.approx(float(hoeffding_bentkus_ucb(direct.mean(), 150, DELTA)))
    assert calibration.risk_ucb <= ALPHA
    smaller = LAMBDAS[np.searchsorted(LAMBDAS, calibration.scale) - 1]
    low, high = scaled_interval(value, lower, upper, smaller)
    direct = (((target < low) | (target > high)) & mask).sum(axis=1) / mask.sum(axis=1)
    assert float(hoeffding_bentkus_ucb(direct.mean(), 150, DELTA)) > ALPHA


def test_required_scale_is_the_smallest_covering_scale() -> None:
    value = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    target = np.array([7.0, 13.0, 10.0, 9.0, 12.0])
    lower = np.array([2.0, 1.0, 0.0, 0.0, 5.0])
    upper = np.array([1.0, 6.0, 0.0, 3.0, 4.0])
    scales = required_scale(value, target, lower, upper)
    np.testing.assert_array_equal(scales, [1.5, 0.5, 0.0, np.inf, 0.5])
    for index in np.flatnonzero(np.isfinite(scales) & (scales > 0)):
        args = (value[index], lower[index], upper[index])
        low, high = scaled_interval(*args, scales[index])
        assert low <= target[index] <= high
        low, high = scaled_interval(*args, scales[index] * (1 - 1e-9))
        assert not low <= target[index] <= high


def test_symmetric_scalar_uncertainty_broadcasts() -> None:
    low, high = scaled_interval(np.array([[1.0, 2.0]]), 0.5, 0.5, 2.0)
    np.testing.assert_array_equal(low, [[0.0, 1.0]])
    np.testing.assert_array_equal(high, [[2.0, 3.0]])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: required_scale([1.0], [2.0], [-1.0], [1.0]), "lower_offset must be >= 0 .*got -1.0"),
        (lambda: required_scale([1.0], [np.nan], [1.0], [1.0]), "target must be finite"),
        (lambda: required_scale([1.0, 2.0], [1.0, 2.0, 3.0], 1.0, 1.0), r"value \(2,\), target \(3,\)"),
        (lambda: scaled_interval([1.0], [1.0], [np.nan], 1.0), "upper_offset must be >= 0"),
        (lambda: scaled_interval([1.0], [1.0], [1.0], -0.5), "scale must be finite and >= 0, got -0.5"),
        (lambda: miscoverage_losses(np.ones((2, 3)), [1.0, 1.0]), "strictly increasing"),
        (lambda: miscoverage_losses(np.ones((2, 3)), [[1.0]]), "non-empty 1-D grid"),
        (lambda: miscoverage_losses(np.ones((2, 3)), [1.0], mask=[[1, 1, 1], [0, 0, 0]]), "no pixel of item 1"),
        (lambda: calibrate_scale(np.zeros((5, 2)), [1.0, 2.0, 3.0], alpha=0.1, delta=0.1), r"shape \(items >= 1, 3"),
        (lambda: calibrate_scale(np.full((5, 1), 1.5), [1.0], alpha=0.1, delta=0.1), r"losses must be in \[0, 1\]"),
        (lambda: calibrate_scale(np.zeros((5, 1)), [1.0], alpha=0.0, delta=0.1), "alpha must be in"),
    ],
)
def test_malformed_inputs_are_named(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --- Calibration -----------------------------------------------------------------------------------------------------


def test_calibration_round_trips_through_json() -> None:
    calibration = calibrate_scale(
        item_losses(np.random.default_rng(11), 100, "symmetric"), LAMBDAS, alpha=0.1, delta=0.1
    )
    text = json.dumps(calibration.to_dict())
    assert Calibration.from_dict(json.loads(text)) == calibration
    assert json.loads(text)["bound"] == "wsr"


GOOD = {"alpha": 0.1, "delta": 0.1, "scale": 1.4, "bound": "bentkus", "n_items": 100, "risk": 0.02, "risk_ucb": 0.07}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"alpha": 1.5}, "'alpha' must be in"),
        ({"delta": 0.0}, "'delta' must be in"),
        ({"alpha": "0.1"}, "'alpha' must be a finite number"),
        ({"scale": -1.0}, "'scale' must be >= 0"),
        ({"scale": math.inf}, "'scale' must be a finite number"),
        ({"bound": "chernoff"}, "'bound' must be one of"),
        ({"n_items": 0}, "'n_items' must be an integer"),
        ({"n_items": 2.5}, "'n_items' must be an integer"),
        ({"n_items": True}, "'n_items' must be an integer"),
        ({"risk": 1.2}, "'risk' must be in"),
        ({"risk_ucb": 0.01}, "'risk_ucb' must lie in"),
        ({"risk_ucb": 0.2}, "'risk_ucb' must lie in"),
        ({"lambda": 1.4}, r"unknown keys \['lambda'\]"),
    ],
)
def test_calibration_rejects_bad_fields(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Calibration.from_dict({**GOOD, **changes})


def test_calibration_rejects_missing_keys() -> None:
    with pytest.raises(ValueError, match=r"missing keys \['risk_ucb'\]"):
        Calibration.from_dict({k: v for k, v in GOOD.items() if k != "risk_ucb"})


# --- pinball loss ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.05, 0.5, 0.95])
def test_pinball_loss_matches_the_formula(quantile: float) -> None:
    rng = np.random.default_rng(12)
    prediction, target = rng.normal(size=(2, 4, 16, 16))
    expected = np.where(target > prediction, quantile * (target - prediction), (1 - quantile) * (prediction - target))
    loss = pinball_loss(torch.from_numpy(prediction), torch.from_numpy(target), quantile)
    assert loss.shape == ()
    assert float(loss) == pytest.approx(expected.mean(), rel=1e-12)


@pytest.mark.parametrize("quantile", [0.05, 0.95])
def test_pinball_loss_is_smallest_at_the_quantile(quantile: float) -> None:
    """Minimising over a constant prediction recovers the sample quantile (Koenker and Bassett)."""
    target = torch.from_numpy(np.random.default_rng(13).gumbel(size=4000))
    candidates = torch.linspace(-3.0, 6.0, 1801, dtype=torch.float64)
    losses = torch.stack([pinball_loss(c.expand_as(target), target, quantile) for c in candidates])
    best = float(candidates[losses.argmin()])
    assert best == pytest.approx(float(np.quantile(target.numpy(), quantile)), abs=0.01)


def test_pinball_loss_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="quantile must be in"):
        pinball_loss(torch.zeros(3), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"\(3,\) and target \(4,\)"):
        pinball_loss(torch.zeros(3), torch.zeros(4), 0.5)
