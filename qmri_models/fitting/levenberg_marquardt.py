"""Batched, bounded, weighted Levenberg-Marquardt: every pixel of a slice fitted at once in torch.

Each pixel has its own damping and stops on its own; the iteration ends when all have converged. Bounds are kept by
projection. The covariance follows Gadgetron's mapping gadgets and scipy's ``curve_fit``: ``s^2 (J^T W J)^-1`` with
``s^2 = r^T W r / (phases - n_params)`` the residual-based noise estimate, or ``(J^T W J)^-1`` when the weights are
known inverse variances (``absolute_weights``, as ``curve_fit(absolute_sigma=True)``).
"""

from dataclasses import dataclass

import torch

from qmri_models.signal_models import SignalModel

_DAMPING_START = 1e-3
_DAMPING_UP = 4.0
_DAMPING_DOWN = 3.0
_DAMPING_MAX = 1e12


@dataclass(frozen=True)
class FitResult:
    """Result of a batched fit; every tensor has the pixels first."""

    params: torch.Tensor
    """Fitted parameters. Shape `(pixels, n_params)`."""
    covariance: torch.Tensor
    """Parameter covariance. Shape `(pixels, n_params, n_params)`."""
    residual_sd: torch.Tensor
    """Residual-based noise estimate ``sqrt(r^T W r / (phases - n_params))``. Shape `(pixels,)`."""
    converged: torch.Tensor
    """Whether the pixel stopped before ``max_iterations``: tolerance met, or no step lowers the cost even with
    the largest damping (a minimum to machine precision). Shape `(pixels,)` bool."""
    iterations: int
    """Iterations run (for the slowest pixel)."""

    @property
    def sd(self) -> torch.Tensor:
        """Standard deviation of every parameter. Shape `(pixels, n_params)`."""
        return torch.sqrt(torch.clamp(torch.diagonal(self.covariance, dim1=-2, dim2=-1), min=0.0))


def fit_pixels(
    model: SignalModel,
    data: torch.Tensor,
    times_ms: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    absolute_weights: bool = False,
    max_iterations: int = 100,
    tolerance: float = 1e-10,
) -> FitResult:
    """Return the weighted least-squares fit of ``model`` to every pixel's signal.

    Amplitude parameters are fitted on data scaled to a unit maximum per pixel and scaled back, so the damping and
    tolerances do not depend on the image's gain.

    Parameters
    ----------
    model : The signal model.
    data : Signal of every pixel (signed for signed models). Shape `(pixels, phases)` real.
    times_ms : Preparation time of every phase in ms. Shape `(phases,)`.
    weights : Weight of every phase, per pixel or shared, non-negative. Shape `(pixels, phases)` or `(phases,)`;
        None for equal weights.
    start : Starting parameters, shape `(pixels, n_params)`; None for the model's grid-search start.
    absolute_weights : The weights are inverse noise variances: the covariance is ``(J^T W J)^-1`` unscaled.
    max_iterations : Most iterations.
    tolerance : A pixel has converged when its relative cost decrease and its relative step are below this.

    Returns
    -------
    Parameters, covariance, residual SD and convergence of every pixel.
    """
    if data.ndim != 2:
        raise ValueError(f"data must be (pixels, phases), got shape {tuple(data.shape)}")
    n_pixels, n_phases = data.shape
    n_params = len(model.parameters)
    if times_ms.shape != (n_phases,):
        raise ValueError(f"times_ms must have one time per phase ({n_phases}), got shape {tuple(times_ms.shape)}")
    if n_phases <= n_params:
        raise ValueError(f"model {model.name} has {n_params} parameters and needs more phases, got {n_phases}")
    times_ms = times_ms.to(data)
    w = _weights(weights, data)
    scale = torch.clamp(data.abs().amax(dim=1), min=torch.finfo(data.dtype).tiny)
    amplitude = torch.tensor([p.amplitude for p in model.parameters], device=data.device)
    param_scale = torch.where(amplitude, scale[:, None], torch.ones_like(scale)[:, None])
    y = data / scale[:, None]
    w_scaled = w * scale[:, None] ** 2 if absolute_weights else w
    lower, upper = model.bounds(data)
    x = model.start(y, times_ms) if start is None else start.to(data) / param_scale
    x = torch.clamp(x, lower, upper)

    cost = _cost(model, y, w, x, times_ms)
    damping = torch.full((n_pixels,), _DAMPING_START, dtype=data.dtype, device=data.device)
    active = torch.ones(n_pixels, dtype=torch.bool, device=data.device)
    identity = torch.eye(n_params, dtype=data.dtype, device=data.device)
    iterations = 0
    while iterations < max_iterations and bool(active.any()):
        iterations += 1
        idx = torch.nonzero(active).squeeze(1)
        xa, wa = x[idx], w[idx]
        jac = model.jacobian(xa, times_ms)
        residual = y[idx] - model.signal(xa, times_ms)
        jtwj = torch.einsum("npi,np,npj->nij", jac, wa, jac)
        gradient = torch.einsum("npi,np,np->ni", jac, wa, residual)
        diagonal = torch.diagonal(jtwj, dim1=-2, dim2=-1).clamp(min=1e-12)
        system = jtwj + damping[idx, None, None] * torch.diag_embed(diagonal) + 1e-15 * identity
        step = torch.linalg.solve(system, gradient)
        trial = torch.clamp(xa + step, lower, upper)
        trial_cost = _cost(model, y[idx], wa, trial, times_ms)
        better = trial_cost < cost[idx]
        relative_drop = (cost[idx] - trial_cost) / cost[idx].clamp(min=torch.finfo(data.dtype).tiny)
        relative_step = ((trial - xa).abs() / (xa.abs() + 1e-12)).amax(-1)
        x[idx] = torch.where(better[:, None], trial, xa)
        cost[idx] = torch.where(better, trial_cost, cost[idx])
        damping[idx] = torch.where(better, damping[idx] / _DAMPING_DOWN, damping[idx] * _DAMPING_UP)
        done = (better & (relative_drop < tolerance) & (relative_step < tolerance**0.5)) | (damping[idx] > _DAMPING_MAX)
        done |= cost[idx] <= torch.finfo(data.dtype).tiny
        active[idx[done]] = False
    converged = ~active
    covariance, residual_sd = _covariance(model, x, y, w, w_scaled, times_ms, absolute_weights=absolute_weights)
    params = x * param_scale
    covariance = covariance * param_scale[:, :, None] * param_scale[:, None, :]
    return FitResult(params, covariance, residual_sd * scale, converged, iterations)


def _cost(
    model: SignalModel, y: torch.Tensor, w: torch.Tensor, params: torch.Tensor, times_ms: torch.Tensor
) -> torch.Tensor:
    """Return the weighted sum of squared residuals of each pixel. Shape `(pixels,)`."""
    return (w * (y - model.signal(params, times_ms)) ** 2).sum(-1)


def _weights(weights: torch.Tensor | None, data: torch.Tensor) -> torch.Tensor:
    """Return the weights broadcast to the data's shape, checked. Shape `(pixels, phases)`."""
    if weights is None:
        return torch.ones_like(data)
    w = weights.to(data)
    if w.shape not in (data.shape, data.shape[1:]):
        raise ValueError(
            f"weights must have shape {tuple(data.shape)} or {tuple(data.shape[1:])}, got {tuple(w.shape)}"
        )
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite and non-negative")
    return w.expand_as(data).clone()


def _covariance(
    model: SignalModel,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    w_scaled: torch.Tensor,
    times_ms: torch.Tensor,
    *,
    absolute_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the covariance of the scaled parameters and the residual SD of the scaled data.

    ``w`` are the weights used in the fit; ``w_scaled`` the weights as inverse variances of the scaled data (only
    used with ``absolute_weights``).
    """
    n_phases, n_params = y.shape[1], x.shape[1]
    jac = model.jacobian(x, times_ms)
    residual = y - model.signal(x, times_ms)
    residual_var = (w * residual**2).sum(-1) / (n_phases - n_params)
    information = torch.einsum("npi,np,npj->nij", jac, w_scaled if absolute_weights else w, jac)
    inverse = torch.linalg.pinv(information, hermitian=True)
    covariance = inverse if absolute_weights else inverse * residual_var[:, None, None]
    return covariance, torch.sqrt(residual_var)
