"""Batches of tiny linear systems (2x2, 3x3), solved in closed form.

Per-pixel fits solve one 2x2 or 3x3 system per pixel and iteration; batched LAPACK costs more in call overhead than
their arithmetic, so these are solved by their adjugate.
"""

import torch


def solve_small(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Return the solution of a batch of small linear systems; closed form (Cramer) up to 3 unknowns.

    Batched LAPACK costs more in call overhead than the arithmetic of a 2x2 or 3x3 system, so these are solved by
    their adjugate. A singular system gives non-finite steps, which the caller rejects like a cost increase.

    Parameters
    ----------
    system : Matrices. Shape `(n, p, p)`.
    rhs : Right-hand sides. Shape `(n, p)`.

    Returns
    -------
    Solutions. Shape `(n, p)`.
    """
    p = rhs.shape[-1]
    if p == 1:
        return rhs / system[:, 0]
    if p == 2:
        a, b, c, d = system[:, 0, 0], system[:, 0, 1], system[:, 1, 0], system[:, 1, 1]
        det = a * d - b * c
        return torch.stack([d * rhs[:, 0] - b * rhs[:, 1], a * rhs[:, 1] - c * rhs[:, 0]], dim=-1) / det[:, None]
    if p == 3:
        c0, c1, c2 = system[:, :, 0], system[:, :, 1], system[:, :, 2]
        cross = torch.linalg.cross(c1, c2)
        det = (c0 * cross).sum(-1)
        x0 = (rhs * cross).sum(-1)
        x1 = (c0 * torch.linalg.cross(rhs, c2)).sum(-1)
        x2 = (c0 * torch.linalg.cross(c1, rhs)).sum(-1)
        return torch.stack([x0, x1, x2], dim=-1) / det[:, None]
    return torch.linalg.solve(system, rhs)


def invert_small(matrices: torch.Tensor) -> torch.Tensor:
    """Return the inverses of a batch of small matrices (closed form up to 3x3), NaN where singular.

    A singular information matrix means a parameter the data do not determine; its SD is reported as NaN rather
    than as a finite number that would look trustworthy.

    Parameters
    ----------
    matrices : Shape `(n, p, p)`.

    Returns
    -------
    Inverses. Shape `(n, p, p)`.
    """
    p = matrices.shape[-1]
    identity = torch.eye(p, dtype=matrices.dtype, device=matrices.device).expand(matrices.shape[0], p, p)
    columns = [solve_small(matrices, identity[:, :, i]) for i in range(p)]
    return torch.stack(columns, dim=-1)
