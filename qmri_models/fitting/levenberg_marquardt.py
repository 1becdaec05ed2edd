"""Batched, bounded, weighted Levenberg-Marquardt: every pixel of a slice fitted at once in torch.

Each pixel has its own damping and stops on its own; the iteration ends when all have converged. Bounds are kept by
projection. The covariance follows Gadgetron's mapping gadgets and scipy's ``curve_fit``: ``s^2 (J^T W J)^-1`` with
``s^2 = r^T W r / (phases - n_params)`` the residual-based noise estimate, or ``(J^T W J)^-1`` when the weights are
known inverse variances (``absolute_weights``, as ``curve_fit(absolute_sigma=True)``).
"""

from dataclasses import dataclass

import torch

from qmri_models.interrupt import check_interrupt
from qmri_models.signal_models import SignalModel
from qmri_models.small_linalg import invert_small, solve_small

_DAMPING_START = 1e-4
_DAMPING_UP = 4.0
_DAMPING_DOWN = 3.0
_DAMPING_MAX = 1e10
_STEP_TOLERANCE = 1e-8
"""A step (tried or taken) smaller than this, relative to every parameter, ends a pixel's fit (MINPACK's xtol)."""


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
    """Whether the pixel stopped before ``max_iterations``: its cost stopped falling, or its steps became negligible
    (a minimum to machine precision). Shape `(pixels,)` bool."""
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
    tolerance: float = 1e-8,
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
    tolerance : A pixel has converged when an accepted step lowers its cost by less than this fraction.

    Returns
    -------
    Parameters, covariance, residual SD and convergence of every pixel.

    Raises
    ------
    ValueError
        If the data, times or weights have the wrong shape, a weight is negative or not finite, or the model has
        as many parameters as there are phases.
    qmri_models.interrupt.Interrupted
        When run inside ``interruptible`` and its event is set (checked once per iteration).
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
    lower, upper = model.bounds(data)
    x = model.start(y, times_ms, None if weights is None else w) if start is None else start.to(data) / param_scale
    x = torch.clamp(x, lower, upper)
    converged = torch.zeros(n_pixels, dtype=torch.bool, device=data.device)
    # The working set: pixels still iterating, compacted when a quarter of them has stopped.
    work = torch.arange(n_pixels, device=data.device)
    xw, yw, ww = x.clone(), y, w
    residual = yw - model.signal(xw, times_ms)
    cost = (ww * residual**2).sum(-1)
    damping = torch.full((n_pixels,), _DAMPING_START, dtype=data.dtype, device=data.device)
    stopped = torch.zeros(n_pixels, dtype=torch.bool, device=data.device)
    iterations = 0
    while iterations < max_iterations and work.numel() > 0:
        check_interrupt()  # a stream whose client has gone stops here, within one iteration (milliseconds)
        iterations += 1
        jac = model.jacobian(xw, times_ms)
        weighted_jac = jac * ww[..., None]
        jtwj = torch.einsum("npi,npj->nij", weighted_jac, jac)  # faster than bmm or a broadcast sum here (measured)
        gradient = torch.einsum("npi,np->ni", weighted_jac, residual)
        diagonal = torch.diagonal(jtwj, dim1=-2, dim2=-1).clamp(min=1e-12)
        # Parameters on a bound that the step would push outward are held there (the reduced system of the others).
        held = ((xw <= lower) & (gradient < 0)) | ((xw >= upper) & (gradient > 0))
        free = (~held).to(data.dtype)
        system = (jtwj + torch.diag_embed(damping[:, None] * diagonal)) * (free[:, :, None] * free[:, None, :])
        step = solve_small(system + torch.diag_embed(1.0 - free), gradient * free)
        trial = torch.clamp(xw + step, lower, upper)
        trial_residual = yw - model.signal(trial, times_ms)
        trial_cost = (ww * trial_residual**2).sum(-1)
        better = trial_cost < cost
        relative_drop = (cost - trial_cost) / cost.clamp(min=torch.finfo(data.dtype).tiny)
        relative_step = ((trial - xw).abs() / (xw.abs() + 1e-12)).amax(-1)
        xw = torch.where(better[:, None], trial, xw)
        residual = torch.where(better[:, None], trial_residual, residual)
        cost = torch.where(better, trial_cost, cost)
        damping = torch.where(better, damping / _DAMPING_DOWN, damping * _DAMPING_UP)
        stopped = (better & (relative_drop < tolerance)) | (relative_step < _STEP_TOLERANCE) | (damping > _DAMPING_MAX)
        stopped |= cost <= torch.finfo(data.dtype).tiny
        if 4 * int(stopped.sum()) >= work.numel():
            x[work] = xw
            converged[work[stopped]] = True
            keep = ~stopped
            work, xw, yw, ww = work[keep], xw[keep], yw[keep], ww[keep]
            residual, cost, damping, stopped = residual[keep], cost[keep], damping[keep], stopped[keep]
    x[work] = xw
    converged[work[stopped]] = True
    covariance, residual_sd = _covariance(model, x, y, w, times_ms, scale, absolute_weights=absolute_weights)
    params = x * param_scale
    covariance = covariance * param_scale[:, :, None] * param_scale[:, None, :]
    return FitResult(params, covariance, residual_sd * scale, converged, iterations)


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
    times_ms: torch.Tensor,
    scale: torch.Tensor,
    *,
    absolute_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the covariance of the scaled parameters and the residual SD of the scaled data.

    ``x`` and ``y`` are scaled by ``scale`` (each pixel's maximum); with ``absolute_weights`` the weights are inverse
    variances of the unscaled data, so of the scaled data they are ``w * scale^2``.
    """
    n_phases, n_params = y.shape[1], x.shape[1]
    jac = model.jacobian(x, times_ms)
    residual = y - model.signal(x, times_ms)
    residual_var = (w * residual**2).sum(-1) / (n_phases - n_params)
    information_weights = w * scale[:, None] ** 2 if absolute_weights else w
    information = torch.einsum("npi,npj->nij", jac * information_weights[..., None], jac)
    inverse = invert_small(information)
    covariance = inverse if absolute_weights else inverse * residual_var[:, None, None]
    return covariance, torch.sqrt(residual_var)
