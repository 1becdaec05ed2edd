"""Risk-controlling scale: the smallest lambda whose upper confidence bound on the miscoverage risk is <= alpha.

Bates et al. 2021 ("Distribution-free, risk-controlling prediction sets", J. ACM 68(6); seed 001's [40], eq. (5)):
with a loss that is non-increasing in lambda, scan the grid from the largest lambda down and stop before the first
lambda whose bound exceeds alpha::

    lambda_hat = min {lambda in grid : R_plus(lambda') <= alpha for every grid lambda' >= lambda}

Then, for calibration items and a new item drawn independently from the same law, the risk at ``lambda_hat`` (the
expected loss of the new item) is at most alpha with probability at least 1 - delta over the calibration draw.
Stopping at the first failure, rather than taking the smallest lambda that passes anywhere, is what the guarantee
needs: the proof uses the bound at one lambda only, the largest grid lambda whose true risk exceeds alpha; the scan
passes below it only if the bound there is <= alpha, which happens with probability at most delta.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from qmri_models.calibration.bounds import BOUND_NAMES, DEFAULT_BOUND, BoundName, upper_confidence_bound_of_losses
from qmri_models.calibration.intervals import check_lambdas, miscoverage_losses, required_scale


def _number(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise a ValueError naming the field when it is no finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"calibration field {name!r} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Calibration:
    """A calibrated interval scale and the evidence for it: the risk is <= alpha with probability >= 1 - delta.

    Validated on construction (so also when read back from JSON): a ValueError names the bad field.
    """

    alpha: float
    """Controlled risk: the tolerated expected fraction of pixels outside the interval, in (0, 1)."""
    delta: float
    """Probability that the calibration draw fails to control the risk, in (0, 1)."""
    scale: float
    """Calibrated scale lambda of the interval ``[value - lambda * lower_offset, value + lambda * upper_offset]``."""
    bound: BoundName
    """The upper confidence bound used (``bounds.BOUND_NAMES``)."""
    n_items: int
    """Number of calibration items (slices, images): one loss each."""
    risk: float
    """Mean miscoverage loss of the calibration items at ``scale``, in [0, 1]."""
    risk_ucb: float
    """Upper confidence bound on the risk at ``scale``, in [risk, alpha]."""

    def __post_init__(self) -> None:
        for name in ("alpha", "delta", "scale", "risk", "risk_ucb"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        for name in ("alpha", "delta"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"calibration field {name!r} must be in (0, 1), got {getattr(self, name)}")
        if self.scale < 0.0:
            raise ValueError(f"calibration field 'scale' must be >= 0, got {self.scale}")
        if self.bound not in BOUND_NAMES:
            raise ValueError(f"calibration field 'bound' must be one of {BOUND_NAMES}, got {self.bound!r}")
        if isinstance(self.n_items, bool) or not isinstance(self.n_items, int) or self.n_items < 1:
            raise ValueError(f"calibration field 'n_items' must be an integer >= 1, got {self.n_items!r}")
        if not 0.0 <= self.risk <= 1.0:
            raise ValueError(f"calibration field 'risk' must be in [0, 1], got {self.risk}")
        if not self.risk <= self.risk_ucb <= self.alpha:
            raise ValueError(
                f"calibration field 'risk_ucb' must lie in [risk {self.risk}, alpha {self.alpha}], got {self.risk_ucb}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the calibration as a JSON-able dict of its fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        """Return the calibration of a dict made by ``to_dict``; missing or unknown keys are an error."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise ValueError(f"calibration dict: missing keys {missing}, unknown keys {unknown}")
        return cls(**values)


def calibrate_scale(
    losses: npt.ArrayLike,
    lambdas: npt.ArrayLike,
    *,
    alpha: float,
    delta: float,
    bound: BoundName = DEFAULT_BOUND,
) -> Calibration:
    """Return the smallest scale whose upper confidence bound on the risk stays <= alpha from the top of the grid down.

    Parameters
    ----------
    losses : Loss of every calibration item at every scale, in [0, 1], non-increasing in lambda for the guarantee
        (``miscoverage_losses`` makes them). Shape `(items, n_lambdas)`.
    lambdas : Candidate scales, strictly increasing. Shape `(n_lambdas,)`.
    alpha : Risk to control, in (0, 1).
    delta : Tolerated probability of failing to control it, in (0, 1).
    bound : Upper confidence bound (``bounds.BOUND_NAMES``).

    Returns
    -------
    The calibration at the chosen scale.

    Raises
    ------
    ValueError
        If even the largest lambda's bound exceeds alpha (more items, a wider grid or a larger alpha or delta help),
        or the inputs are malformed.
    """
    grid = check_lambdas(lambdas)
    table = np.asarray(losses, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] != grid.size:
        raise ValueError(f"losses must have shape (items >= 1, {grid.size} lambdas), got {table.shape}")
    if not ((table >= 0.0) & (table <= 1.0)).all():
        raise ValueError("losses must be in [0, 1] (fractions of pixels outside the interval)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n_items = table.shape[0]
    risk = table.mean(axis=0)
    ucb = upper_confidence_bound_of_losses(table, delta, bound=bound)
    failing = np.flatnonzero(ucb > alpha)
    if failing.size and failing[-1] == grid.size - 1:
        raise ValueError(
            f"no scale controls the risk at alpha={alpha}, delta={delta} with n={n_items} items: the {bound} bound "
            f"at the largest lambda {grid[-1]} (the best reached) is {ucb[-1]:.4f} > alpha"
        )
    chosen = failing[-1] + 1 if failing.size else 0
    return Calibration(
        alpha=alpha,
        delta=delta,
        scale=float(grid[chosen]),
        bound=bound,
        n_items=n_items,
        risk=float(risk[chosen]),
        risk_ucb=float(ucb[chosen]),
    )


def calibrate_interval_scale(
    value: npt.ArrayLike,
    target: npt.ArrayLike,
    lower_offset: npt.ArrayLike,
    upper_offset: npt.ArrayLike,
    lambdas: npt.ArrayLike,
    *,
    alpha: float,
    delta: float,
    bound: BoundName = DEFAULT_BOUND,
    mask: npt.ArrayLike | None = None,
) -> Calibration:
    """Return the calibrated scale of ``[value - lambda * lower_offset, value + lambda * upper_offset]`` from pixels.

    Each item's loss is the fraction of its mask's pixels whose target lies outside the interval
    (``intervals.miscoverage_losses``); for a symmetric interval ``value +- lambda * u`` pass ``u`` as both offsets.

    Parameters
    ----------
    value : Point estimates of the calibration items (reconstructions, maps). Shape `(items, *pixels)`.
    target : True values, broadcastable with ``value``.
    lower_offset : Lower offset before scaling, >= 0, broadcastable.
    upper_offset : Upper offset before scaling, >= 0, broadcastable.
    lambdas : Candidate scales, strictly increasing. Shape `(n_lambdas,)`.
    alpha : Risk to control: the expected fraction of mask pixels outside, in (0, 1).
    delta : Tolerated probability of failing to control it, in (0, 1).
    bound : Upper confidence bound (``bounds.BOUND_NAMES``).
    mask : Pixels that count, bool, broadcastable (all pixels if None).

    Returns
    -------
    The calibration at the chosen scale.
    """
    scales = required_scale(value, target, lower_offset, upper_offset)
    losses = miscoverage_losses(scales, lambdas, mask=mask)
    return calibrate_scale(losses, lambdas, alpha=alpha, delta=delta, bound=bound)
