"""Cartesian undersampling masks."""

import numpy as np

DEFAULT_ACS_FRACTION: dict[int, float] = {1: 1.0, 4: 0.08, 6: 0.06, 8: 0.06, 10: 0.08}
"""Fully sampled centre fraction per acceleration; 6/8/10x as in the PUQ paper."""


def acs_lines(n_ky: int, acs_fraction: float) -> np.ndarray:
    """Return the indices of the fully sampled centre (calibration) lines.

    Parameters
    ----------
    n_ky : Number of phase-encoding lines.
    acs_fraction : Fraction of lines in the centre block, in (0, 1].

    Returns
    -------
    Line indices, ascending. Shape `(n_acs,)` int.
    """
    if not 0.0 < acs_fraction <= 1.0:
        raise ValueError(f"acs_fraction must be in (0, 1], got {acs_fraction}")
    n_acs = max(2, round(acs_fraction * n_ky))
    start = n_ky // 2 - n_acs // 2
    return np.arange(start, start + n_acs)


def random_line_mask(
    n_phases: int, n_ky: int, acceleration: int, acs_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Return 1D Cartesian random undersampling masks, one per phase, with a fully sampled centre.

    Each phase keeps ``round(n_ky / acceleration)`` lines: the centre block and the rest drawn uniformly at random
    among the outer lines, independently per phase (as in the PUQ paper's data).

    Parameters
    ----------
    n_phases : Number of phases (preparation times).
    n_ky : Number of phase-encoding lines.
    acceleration : Undersampling factor, at least 1.
    acs_fraction : Fraction of lines in the fully sampled centre.
    rng : Random generator.

    Returns
    -------
    Sampled lines. Shape `(phases, ky)` bool.
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be at least 1, got {acceleration}")
    if acceleration == 1:
        return np.ones((n_phases, n_ky), dtype=bool)
    centre = acs_lines(n_ky, acs_fraction)
    n_lines = max(round(n_ky / acceleration), centre.size)
    outer = np.setdiff1d(np.arange(n_ky), centre)
    mask = np.zeros((n_phases, n_ky), dtype=bool)
    mask[:, centre] = True
    for p in range(n_phases):
        mask[p, rng.choice(outer, size=n_lines - centre.size, replace=False)] = True
    return mask
