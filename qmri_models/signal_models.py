"""Forward signal models of the preparation-based qMRI sequences.

Times are in ms everywhere. Every function broadcasts: the preparation times carry the phase axis in
front, the tissue parameters the image axes behind, e.g. ``ti_ms[:, None, None]`` against ``(y, x)`` maps.
"""

import numpy as np

MOLLI_TI_MS: tuple[float, ...] = (251.0, 400.0, 1251.0, 1400.0, 2251.0, 2400.0, 3251.0, 4251.0)
"""The 8 inversion times of the PUQ paper's MOLLI data, ms."""

T2PREP_TE_MS: tuple[float, ...] = (0.0, 25.0, 35.0, 45.0, 65.0, 85.0, 105.0, 125.0)
"""The 8 T2-preparation durations of the PUQ paper's T2 data, ms."""


def molli_signal(ti_ms: np.ndarray, a: np.ndarray, b: np.ndarray, t1_star_ms: np.ndarray) -> np.ndarray:
    """Return the signed Look-Locker signal ``A - B exp(-TI / T1*)``.

    Parameters
    ----------
    ti_ms : Inversion times in ms. Shape `(phases, 1, ...)` so it broadcasts against the maps.
    a : Recovered signal A. Shape `(...)`.
    b : Inversion amplitude B (``2 A`` for a perfect inversion without readout effect). Shape `(...)`.
    t1_star_ms : Apparent relaxation time T1* in ms. Shape `(...)`.

    Returns
    -------
    Signed signal. Shape `(phases, ...)`.
    """
    return a - b * np.exp(-ti_ms / t1_star_ms)


def molli_parameters_from_t1(
    t1_ms: np.ndarray, pd: np.ndarray, inversion_efficiency: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the three-parameter model ``(A, B, T1*)`` that a tissue of ``T1`` and ``PD`` gives.

    With ``B / A = 1 + inversion_efficiency`` and ``T1* = T1 / (B / A - 1)``, the usual Look-Locker correction
    ``T1 = T1* (B / A - 1)`` gives back ``t1_ms`` exactly, so the simulator's truth is what a correct fit returns.

    Parameters
    ----------
    t1_ms : T1 in ms. Shape `(...)`.
    pd : Proton density. Shape `(...)`.
    inversion_efficiency : Fraction of longitudinal magnetisation inverted, in (0, 1].

    Returns
    -------
    ``(a, b, t1_star_ms)``, each shape `(...)`.
    """
    if not 0.0 < inversion_efficiency <= 1.0:
        raise ValueError(f"inversion_efficiency must be in (0, 1], got {inversion_efficiency}")
    a = np.asarray(pd, dtype=np.float64)
    b = a * (1.0 + inversion_efficiency)
    t1_star_ms = np.asarray(t1_ms, dtype=np.float64) / inversion_efficiency
    return a, b, t1_star_ms


def t2prep_signal(te_prep_ms: np.ndarray, m0: np.ndarray, t2_ms: np.ndarray) -> np.ndarray:
    """Return the T2-prepared signal ``M0 exp(-TEprep / T2)``.

    Parameters
    ----------
    te_prep_ms : T2-preparation durations in ms. Shape `(phases, 1, ...)`.
    m0 : Signal without preparation. Shape `(...)`.
    t2_ms : T2 in ms; 0 where there is no tissue. Shape `(...)`.

    Returns
    -------
    Signal. Shape `(phases, ...)`.
    """
    safe_t2 = np.where(t2_ms > 0, t2_ms, np.inf)
    return m0 * np.exp(-te_prep_ms / safe_t2)
