"""Out-of-distribution flags of a learned map: where it lies further from the model-based fit than calibration saw.

A learned fit (PUQ's MLP) knows the signals it was trained on; outside them (a phantom's short T2, a T1 no brain
has) its answer can be far off while its spread over MC samples stays small. The model-based fit of the same images
does not depend on training, so the score of a pixel is the learned map's relative distance to it,
``|learned - model_based| / learned``. On calibration slices (brain, as the training) a threshold is set at the
conformal ``1 - level`` quantile of the scores of every kept pixel of the imaged object (white and grey matter,
CSF, fat, lesions: what the learned fit was trained on), per acceleration: a new in-distribution pixel
exceeds it with probability at most about ``level`` (split-conformal outlier detection; the pixels of one slice are
not independent, so this holds on average over pixels, not per slice). A pixel above the threshold is flagged; a
structure is flagged when more than ``STRUCTURE_FLAG_FRACTION`` of its pixels are.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

OOD_LEVEL = 0.01
"""Default fraction of in-distribution (calibration) object pixels a threshold flags."""
STRUCTURE_FLAG_FRACTION = 0.25
"""A structure is flagged when more than this fraction of its pixels are: at ``OOD_LEVEL`` 1% flagged pixels in
the tissue, a quarter of a structure's pixels flagged is far beyond chance."""


def disagreement_scores(value: np.ndarray, model_fit: np.ndarray) -> np.ndarray:
    """Return every pixel's score ``|value - model_fit| / value`` (inf where the value is not positive).

    Parameters
    ----------
    value : The learned map, in its unit. Any shape.
    model_fit : The model-based fit of the same images, same shape and unit.

    Returns
    -------
    The scores, unitless, float64, same shape.
    """
    value = np.asarray(value, dtype=np.float64)
    distance = np.abs(value - np.asarray(model_fit, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(value > 0, distance / np.where(value > 0, value, 1.0), np.inf)


def conformal_threshold(scores: np.ndarray, level: float) -> float:
    """Return the split-conformal threshold: the ``ceil((n + 1)(1 - level))``-th smallest of ``n`` scores.

    A new score exchangeable with ``scores`` exceeds it with probability at most ``level``.

    Raises
    ------
    ValueError
        If ``level`` is not in (0, 1) or there are too few scores for it (fewer than ``(1 - level) / level``).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ordered = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    rank = math.ceil((ordered.size + 1) * (1.0 - level))
    if rank > ordered.size:
        need = math.ceil((1.0 - level) / level - 1e-9)
        raise ValueError(f"{ordered.size} scores are too few for a level of {level}: need at least {need}")
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class OutOfDistribution:
    """Calibrated out-of-distribution thresholds of a learned map's disagreement score, per acceleration.

    Validated on construction (so also when read back from JSON): a ValueError names the bad field.
    """

    level: float
    """Fraction of the calibration's object pixels above each threshold at most, in (0, 1)."""
    thresholds: dict[int, float]
    """Per acceleration factor, the threshold on ``disagreement_scores`` (unitless, >= 0)."""

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int | float) or not 0.0 < self.level < 1.0:
            raise ValueError(f"out_of_distribution field 'level' must be a number in (0, 1), got {self.level!r}")
        if not isinstance(self.thresholds, dict) or not self.thresholds:
            raise ValueError(
                f"out_of_distribution field 'thresholds' must be a non-empty object, got {self.thresholds!r}"
            )
        parsed = {}
        for key, threshold in self.thresholds.items():
            acceleration = int(key) if isinstance(key, str) and key.isdecimal() else key
            if isinstance(acceleration, bool) or not isinstance(acceleration, int) or acceleration < 1:
                raise ValueError(f"out_of_distribution thresholds need acceleration keys >= 1, got {key!r}")
            valid = isinstance(threshold, int | float) and not isinstance(threshold, bool)
            if not valid or not math.isfinite(threshold) or threshold < 0:
                raise ValueError(f"out_of_distribution threshold at {key} must be finite and >= 0, got {threshold!r}")
            parsed[acceleration] = float(threshold)
        object.__setattr__(self, "thresholds", parsed)

    def flags(self, value: np.ndarray, model_fit: np.ndarray, acceleration: int) -> np.ndarray:
        """Return the pixels whose score exceeds the threshold of ``acceleration``: bool, the maps' shape.

        Raises
        ------
        ValueError
            If no threshold was calibrated at ``acceleration`` (the message names those that were).
        """
        if acceleration not in self.thresholds:
            raise ValueError(
                f"no out-of-distribution threshold at acceleration {acceleration}; calibrated at "
                f"{sorted(self.thresholds)}"
            )
        return disagreement_scores(value, model_fit) > self.thresholds[acceleration]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able dict (acceleration keys as decimal strings)."""
        return {"level": self.level, "thresholds": {str(k): v for k, v in sorted(self.thresholds.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> "OutOfDistribution":
        """Return the record of a dict made by ``to_dict``; missing or unknown keys are named."""
        if not isinstance(data, dict) or set(data) != {"level", "thresholds"}:
            raise ValueError(f"out_of_distribution must be an object with level and thresholds, got {data!r}")
        return cls(level=data["level"], thresholds=data["thresholds"])


def structure_flagged(flags: np.ndarray, structure: np.ndarray) -> bool:
    """Return whether more than ``STRUCTURE_FLAG_FRACTION`` of a structure's pixels are flagged.

    Parameters
    ----------
    flags : Flagged pixels (``OutOfDistribution.flags``). Shape `(y, x)` bool.
    structure : The structure's pixels. Shape `(y, x)` bool; an empty structure is not flagged.
    """
    n = int(structure.sum())
    return n > 0 and float(flags[structure].sum()) > STRUCTURE_FLAG_FRACTION * n
