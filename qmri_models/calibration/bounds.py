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
"""

import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy.special import betaincinv, rel_entr

BoundName = Literal["hoeffding", "bentkus", "hoeffding_bentkus"]
"""The upper confidence bounds a calibration can use."""
BOUND_NAMES: tuple[BoundName, ...] = get_args(BoundName)
DEFAULT_BOUND: BoundName = "hoeffding_bentkus"
"""The bound a calibration uses unless told: the tightest of the three (Bates et al. 2021)."""

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


BOUNDS: dict[BoundName, Callable[[npt.ArrayLike, int, float], np.ndarray]] = {
    "hoeffding": hoeffding_ucb,
    "bentkus": bentkus_ucb,
    "hoeffding_bentkus": hoeffding_bentkus_ucb,
}
"""Each bound's function ``(mean_risk, n, delta) -> upper confidence bound``."""


def upper_confidence_bound(mean_risk: npt.ArrayLike, n: int, delta: float, *, bound: BoundName) -> np.ndarray:
    """Return the named bound's upper confidence bound on the mean loss.

    Parameters
    ----------
    mean_risk : Mean of the n losses, in [0, 1]. Shape `(...)`.
    n : Number of losses (calibration items).
    delta : Probability that the bound is below the true mean, in (0, 1).
    bound : One of ``BOUND_NAMES``.

    Returns
    -------
    Upper confidence bound on the mean loss. Shape: that of ``mean_risk``.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUND_NAMES}, got {bound!r}")
    return BOUNDS[bound](mean_risk, n, delta)
