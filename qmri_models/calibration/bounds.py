r"""Upper confidence bounds on the mean of n independent losses in [0, 1].

Given the mean ``R_hat`` of n independent losses ``L_i`` in [0, 1] with unknown mean ``R``, each bound returns
``R_plus`` with ``P(R > R_plus) <= delta``. All are capped at 1 (a bound above 1 says nothing about a mean in [0, 1]).

Hoeffding (Hoeffding 1963, "Probability inequalities for sums of bounded random variables", J. Am. Stat. Assoc. 58,
Theorem 1, inequality (2.3); the bound seed 001 uses)::

    R_plus = R_hat + sqrt(ln(1 / delta) / (2 n))

Hoeffding in its relative-entropy form (same theorem, inequality (2.1)), for any t <= R::

    P(R_hat <= t) <= exp(-n h1(t, R)),    h1(a, b) = a ln(a / b) + (1 - a) ln((1 - a) / (1 - b))
    R_plus = sup {R >= R_hat : exp(-n h1(R_hat, R)) >= delta}     (solved by bisection; h1 >= 2 (a - b)^2 by
                                                                    Pinsker, so it is never above the first form)

Bentkus (Bentkus 2004, "On Hoeffding's inequalities", Ann. Probab. 32(2))::

    P(R_hat <= t) <= e P(Binomial(n, R) <= ceil(n t))
    R_plus = sup {R : e F(k; n, R) >= delta},  k = ceil(n R_hat),  F the binomial CDF

solved in closed form with ``F(k; n, R) = I_{1-R}(n - k, k + 1)`` (regularised incomplete beta):
``R_plus = 1 - I^{-1}(n - k, k + 1; delta / e)`` for k < n, and 1 for k = n.

Hoeffding-Bentkus (Bates, Angelopoulos, Lei, Malik, Jordan 2021, "Distribution-free, risk-controlling prediction
sets", J. ACM 68(6), Sect. 3): both tail bounds above bound the same probability ``P(R_hat <= t)``, so their minimum
does too, and the p-value ``min(exp(-n h1(R_hat ^ R, R)), e F(k; n, R))`` is valid. Both terms fall with R, so
inverting it gives the smaller of the two bounds::

    R_plus = min(R_plus of Hoeffding's relative-entropy form, R_plus of Bentkus)

Waudby-Smith-Ramdas (Waudby-Smith and Ramdas 2020, "Estimating means of bounded random variables by betting"; the
bound Bates et al. 2021 recommend, their Proposition 5). The three bounds above see only the mean, so they must
allow for losses as spread as a Bernoulli's; a slice's fraction of pixels outside an interval varies far less
between slices, and this bound uses that. Over the losses in their given order (the items are exchangeable, so any
order fixed before looking is valid), with running mean and variance::

    mu_i = (1/2 + sum_{j<=i} L_j) / (1 + i),    s2_i = (1/4 + sum_{j<=i} (L_j - mu_j)^2) / (1 + i),   s2_0 = 1/4
    nu_i = min(1, sqrt(2 ln(1 / delta) / (n s2_{i-1})))
    K_i(R) = prod_{j<=i} (1 - nu_j (L_j - R))
    R_plus = inf {R >= 0 : max_i K_i(R) > 1 / delta}

``K_i(R)`` is a nonnegative supermartingale under ``E L = R`` and grows with R, so Ville's inequality makes
``R_plus`` a valid bound and bisection finds it. It is capped below by the mean (a larger bound stays valid). On the
shipped calibrations' 80 slices it lets the empirical risk reach about 0.07 where Hoeffding-Bentkus stops at 0.037
(``qmri_models/pretrained/calibration/*.md``), so the intervals are about a fifth narrower for the same promise.
"""

import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy.special import betaincinv, rel_entr

BoundName = Literal["hoeffding", "bentkus", "hoeffding_bentkus", "wsr"]
"""The upper confidence bounds a calibration can use."""
BOUND_NAMES: tuple[BoundName, ...] = get_args(BoundName)
DEFAULT_BOUND: BoundName = "wsr"
"""The bound a calibration uses unless told: Waudby-Smith-Ramdas, the tightest on slice losses (module docstring)."""

_BISECTION_STEPS = 64
"""Halvings of [R_hat, 1] for the relative-entropy Hoeffding bound: below float64 resolution."""
_COUNT_ROUNDOFF = 1e-9
"""``n R_hat`` within this of an integer is that integer (a mean of fractions carries round-off into the count)."""


def _check(mean_risk: npt.ArrayLike, n: int, delta: float) -> np.ndarray:
    """Return ``mean_risk`` as float64 after checking it lies in [0, 1], ``n >= 1`` and ``delta`` in (0, 1)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n (number of calibration losses) must be an integer >= 1, got {n!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    risk = np.asarray(mean_risk, dtype=np.float64)
    bad = risk[~((risk >= 0.0) & (risk <= 1.0))]
    if bad.size:
        raise ValueError(f"mean_risk must be in [0, 1] (a mean of losses in [0, 1]), got {bad.flat[0]}")
    return risk


def relative_entropy(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Return ``h1(a, b) = a ln(a / b) + (1 - a) ln((1 - a) / (1 - b))``, Bernoulli relative entropy (0 ln 0 = 0).

    Parameters
    ----------
    a : Observed mean, in [0, 1]. Shape `(...)`.
    b : Hypothesised mean, in [0, 1], broadcastable with ``a``.

    Returns
    -------
    Relative entropy, in [0, inf]. Shape: the broadcast shape.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.asarray(rel_entr(a, b) + rel_entr(1.0 - a, 1.0 - b))


def hoeffding_ucb(mean_risk: npt.ArrayLike, n: int, delta: float) -> np.ndarray:
    """Return Hoeffding's bound ``min(1, R_hat + sqrt(ln(1 / delta) / (2 n)))`` (module docstring).

    Parameters
    ----------
    mean_risk : Mean of the n losses, in [0, 1]. Shape `(...)`.
    n : Number of losses (calibration items).
    delta : Probability that the bound is below the true mean, in (0, 1).

    Returns
    -------
    Upper confidence bound on the mean loss. Shape: that of ``mean_risk``.
    """
    risk = _check(mean_risk, n, delta)
    return np.minimum(1.0, risk + math.sqrt(math.log(1.0 / delta) / (2.0 * n)))


def hoeffding_kl_ucb(mean_risk: npt.ArrayLike, n: int, delta: float) -> np.ndarray:
    """Return the relative-entropy Hoeffding bound ``sup {R >= R_hat : exp(-n h1(R_hat, R)) >= delta}``.

    Parameters
    ----------
    mean_risk : Mean of the n losses, in [0, 1]. Shape `(...)`.
    n : Number of losses (calibration items).
    delta : Probability that the bound is below the true mean, in (0, 1).

    Returns
    -------
    Upper confidence bound on the mean loss (rounded up to float64 resolution). Shape: that of ``mean_risk``.
    """
    risk = _check(mean_risk, n, delta)
    level = math.log(1.0 / delta) / n
    low = risk.copy()
    high = np.ones_like(risk)
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        inside = relative_entropy(risk, middle) < level
        low = np.where(inside, middle, low)
        high = np.where(inside, high, middle)
    return high


def bentkus_ucb(mean_risk: npt.ArrayLike, n: int, delta: float) -> np.ndarray:
    """Return Bentkus's bound ``sup {R : e P(Binomial(n, R) <= ceil(n R_hat)) >= delta}`` (module docstring).

    Parameters
    ----------
    mean_risk : Mean of the n losses, in [0, 1]. Shape `(...)`.
    n : Number of losses (calibration items).
    delta : Probability that the bound is below the true mean, in (0, 1).

    Returns
    -------
    Upper confidence bound on the mean loss. Shape: that of ``mean_risk``.
    """
    risk = _check(mean_risk, n, delta)
    count = np.clip(np.ceil(n * risk - _COUNT_ROUNDOFF), 0, n)
    below_n = count < n
    k = np.where(below_n, count, n - 1)
    bound = 1.0 - betaincinv(n - k, k + 1.0, delta / math.e)
    return np.where(below_n, bound, 1.0)


def hoeffding_bentkus_ucb(mean_risk: npt.ArrayLike, n: int, delta: float) -> np.ndarray:
    """Return the Hoeffding-Bentkus bound of Bates et al. 2021: the smaller of the two bounds it combines.

    Parameters
    ----------
    mean_risk : Mean of the n losses, in [0, 1]. Shape `(...)`.
    n : Number of losses (calibration items).
    delta : Probability that the bound is below the true mean, in (0, 1).

    Returns
    -------
    Upper confidence bound on the mean loss. Shape: that of ``mean_risk``.
    """
    return np.minimum(hoeffding_kl_ucb(mean_risk, n, delta), bentkus_ucb(mean_risk, n, delta))


MEAN_BOUNDS: dict[BoundName, Callable[[npt.ArrayLike, int, float], np.ndarray]] = {
    "hoeffding": hoeffding_ucb,
    "bentkus": bentkus_ucb,
    "hoeffding_bentkus": hoeffding_bentkus_ucb,
}
"""Each bound of the mean alone: its function ``(mean_risk, n, delta) -> upper confidence bound``."""


def wsr_ucb(losses: npt.ArrayLike, delta: float) -> np.ndarray:
    """Return the Waudby-Smith-Ramdas bound of each column of losses (module docstring).

    Parameters
    ----------
    losses : The n losses, in [0, 1], in a fixed order, for each of m quantities (e.g. scales). Shape `(n, m)`.
    delta : Probability that the bound is below the true mean, in (0, 1).

    Returns
    -------
    Upper confidence bound on each column's mean loss, at least its mean. Shape `(m,)`.
    """
    table = np.asarray(losses, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"losses must have shape (n >= 1, m), got {table.shape}")
    n = table.shape[0]
    mean = _check(table.mean(axis=0), n, delta)
    if not ((table >= 0.0) & (table <= 1.0)).all():
        raise ValueError("losses must be in [0, 1]")
    count = np.arange(1, n + 1)[:, None]
    running_mean = (0.5 + np.cumsum(table, axis=0)) / (1.0 + count)
    running_variance = (0.25 + np.cumsum((table - running_mean) ** 2, axis=0)) / (1.0 + count)
    previous = np.vstack([np.full((1, table.shape[1]), 0.25), running_variance[:-1]])
    bets = np.minimum(1.0, np.sqrt(2.0 * math.log(1.0 / delta) / (n * previous)))
    threshold = math.log(1.0 / delta)
    low, high = np.zeros(table.shape[1]), np.ones(table.shape[1])
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        wealth = np.cumsum(np.log1p(-bets * (table - middle)), axis=0)
        rejected = wealth.max(axis=0) > threshold
        high = np.where(rejected, middle, high)
        low = np.where(rejected, low, middle)
    return np.maximum(high, mean)


def upper_confidence_bound_of_losses(losses: npt.ArrayLike, delta: float, *, bound: BoundName) -> np.ndarray:
    """Return the named bound on each column's mean loss: WSR from the losses, the others from their mean.

    Parameters
    ----------
    losses : The n losses, in [0, 1], for each of m quantities (e.g. scales). Shape `(n, m)`.
    delta : Probability that the bound is below the true mean, in (0, 1).
    bound : One of ``BOUND_NAMES``.

    Returns
    -------
    Upper confidence bound on each column's mean loss. Shape `(m,)`.
    """
    if bound == "wsr":
        return wsr_ucb(losses, delta)
    table = np.asarray(losses, dtype=np.float64)
    return upper_confidence_bound(table.mean(axis=0), table.shape[0], delta, bound=bound)


def upper_confidence_bound(mean_risk: npt.ArrayLike, n: int, delta: float, *, bound: BoundName) -> np.ndarray:
    """Return the named bound's upper confidence bound on the mean loss.

    Parameters
    ----------
    mean_risk : Mean of the n losses, in [0, 1]. Shape `(...)`.
    n : Number of losses (calibration items).
    delta : Probability that the bound is below the true mean, in (0, 1).
    bound : One of ``MEAN_BOUNDS`` (WSR needs the losses: ``upper_confidence_bound_of_losses``).

    Returns
    -------
    Upper confidence bound on the mean loss. Shape: that of ``mean_risk``.
    """
    if bound not in MEAN_BOUNDS:
        raise ValueError(f"bound must be one of {tuple(MEAN_BOUNDS)} to bound a mean alone, got {bound!r}")
    return MEAN_BOUNDS[bound](mean_risk, n, delta)
