"""The conjugate-gradient solver of the package's torch operators (the spiral MRF subspace reconstructions).

One solver for every Hermitian positive-definite system ``apply(x) = rhs`` written as a function on tensors, so it
runs where the tensors live (CPU or CUDA) and stops at :func:`qmri_models.interrupt.check_interrupt` before every
iteration. The Cartesian CG-SENSE (``qmri_models.recon.cartesian.cg_sense``) is sigpy's ``SenseRecon`` on sigpy's
numpy/cupy operators, stepped by ``run_app`` with the same interrupt check: it is sigpy's solver, not a second one
written here.
"""

from collections.abc import Callable

import torch

from qmri_models.interrupt import check_interrupt


def conjugate_gradient(
    apply: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    start: torch.Tensor,
    iterations: int,
    on_iteration: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Return ``iterations`` conjugate-gradient steps towards the solution of ``apply(x) = rhs`` from ``start``.

    Parameters
    ----------
    apply : A Hermitian positive-definite operator on tensors shaped like ``rhs``.
    rhs : Right-hand side, complex.
    start : First estimate, shaped like ``rhs``.
    iterations : Steps, at least 1.
    on_iteration : Called with the iteration number and the residual norm relative to ``rhs``'s (progress).

    Returns
    -------
    The estimate, shaped like ``rhs``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    solution = start
    residual = rhs - apply(start) if bool(start.any()) else rhs.clone()
    direction = residual.clone()
    rhs_norm = float(torch.linalg.vector_norm(rhs)) or 1.0
    residual_energy = torch.vdot(residual.flatten(), residual.flatten()).real
    for iteration in range(1, iterations + 1):
        check_interrupt()
        product = apply(direction)
        step = residual_energy / torch.vdot(direction.flatten(), product.flatten()).real
        solution = solution + step * direction
        residual = residual - step * product
        new_energy = torch.vdot(residual.flatten(), residual.flatten()).real
        if on_iteration is not None:
            on_iteration(iteration, float(new_energy.sqrt()) / rhs_norm)
        direction = residual + (new_energy / residual_energy) * direction
        residual_energy = new_energy
    return solution
