"""The package's conjugate-gradient solver: against numpy's direct solve, and interruptible."""

import threading

import numpy as np
import pytest
import torch

from qmri_models.interrupt import Interrupted, interruptible
from qmri_models.recon.conjugate_gradient import conjugate_gradient


def _system(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A well-conditioned Hermitian positive-definite matrix and a right-hand side, complex64."""
    m = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    matrix = torch.from_numpy((m @ m.conj().T + n * np.eye(n)).astype(np.complex64))
    rhs = torch.from_numpy((rng.standard_normal(n) + 1j).astype(np.complex64))
    return matrix, rhs


@pytest.mark.parametrize("offset", [None, 0.5])
def test_conjugate_gradient_solves_a_small_system_like_numpy(offset: float | None) -> None:
    """From zero (no product before the first step) and from near the solution, six steps solve a 6x6 system."""
    matrix, rhs = _system(np.random.default_rng(6), 6)
    expected = np.linalg.solve(matrix.numpy(), rhs.numpy())
    start = torch.zeros(6, dtype=torch.complex64) if offset is None else torch.from_numpy(expected + offset)
    residuals: list[float] = []
    solved = conjugate_gradient(lambda v: matrix @ v, rhs, start, 6, lambda _i, r: residuals.append(r)).numpy()
    np.testing.assert_allclose(solved, expected, rtol=1e-4, atol=1e-5)
    assert len(residuals) == 6
    assert residuals[-1] < 1e-4
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        conjugate_gradient(lambda v: matrix @ v, rhs, rhs, 0)


def test_conjugate_gradient_stops_when_asked() -> None:
    matrix, rhs = _system(np.random.default_rng(7), 4)
    stop = threading.Event()
    applied: list[int] = []

    def apply(v: torch.Tensor) -> torch.Tensor:
        applied.append(1)
        if len(applied) == 3:
            stop.set()
        return matrix @ v

    with interruptible(stop), pytest.raises(Interrupted):
        conjugate_gradient(apply, rhs, torch.zeros_like(rhs), 100)
    assert len(applied) == 3  # the check before the fourth iteration stopped it
