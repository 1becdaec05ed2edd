"""Signal models of the preparation-based qMRI sequences, each with its forward model and Jacobian.

A model maps per-pixel parameters ``(..., n_params)`` and the phases' preparation times ``(phases,)`` in ms to the
signal ``(..., phases)``; ``jacobian`` gives ``(..., phases, n_params)``. Models are torch code, so the fitter runs
every pixel of a slice at once on CPU or CUDA; the simulator calls the same forward model through ``signal_array``,
so what is simulated is what is fitted (``tissue_parameters`` gives the simulator a tissue's parameters). A protocol
(``qmri_models.protocols``) names its model by its ``name`` (``MODELS``).

Every model also offers a variable-projection start: a grid over its nonlinear parameters with the amplitude solved
in closed form at each grid point (``start``), and the maps a clinician reads (``maps``: T1, T2 ... in ms) with
their standard deviation propagated from the parameter covariance.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from qmri_models.small_linalg import solve_small

_GRID_SIZE = 96
"""Points of the log-spaced grid over a relaxation time in the variable-projection start."""


@dataclass(frozen=True)
class Parameter:
    """One fitted parameter: its name, unit, bounds, and whether it scales with the signal (an amplitude)."""

    name: str
    unit: str
    lower: float
    upper: float
    amplitude: bool = False


@dataclass(frozen=True)
class MapOutput:
    """A map a model reports per pixel: value and standard deviation. Shapes `(...)` like the fitted pixels."""

    value: torch.Tensor
    sd: torch.Tensor
    unit: str


class SignalModel(ABC):
    """A signal model: forward signal, Jacobian, a start for the fit, and the maps it reports."""

    name: str
    """What chains call the model."""
    parameters: tuple[Parameter, ...]
    primary_map: str
    """The map this model is for (``T1`` or ``T2``): the chain's map and SD series."""
    signed: bool
    """True when the model gives a signed signal, so magnitude data need their polarity restored before fitting."""

    @abstractmethod
    def signal(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the signal.

        Parameters
        ----------
        params : Parameters in the order of ``parameters``. Shape `(..., n_params)`.
        times_ms : Preparation time of every phase in ms. Shape `(phases,)`.

        Returns
        -------
        Signal. Shape `(..., phases)`.
        """

    @abstractmethod
    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the derivative of the signal by each parameter. Shape `(..., phases, n_params)`."""

    relaxation_range_ms: tuple[float, float]
    """Range of the one relaxation time (T1, T1*, T2) that the start's grid covers, ms."""

    @abstractmethod
    def linear_basis(self, relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the columns the signal is a linear combination of, for a given relaxation time.

        Parameters
        ----------
        relaxation_ms : Relaxation time in ms. Shape `(...)`.
        times_ms : Preparation times in ms. Shape `(phases,)`.

        Returns
        -------
        Basis. Shape `(..., phases, n_linear)`.
        """

    @abstractmethod
    def from_linear(self, relaxation_ms: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Return the parameters for a relaxation time and the coefficients of ``linear_basis``.

        Parameters
        ----------
        relaxation_ms : Shape `(pixels,)`.
        coefficients : Shape `(pixels, n_linear)`.

        Returns
        -------
        Parameters, within bounds. Shape `(pixels, n_params)`.
        """

    def start(self, data: torch.Tensor, times_ms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Return starting parameters by variable projection.

        The relaxation time comes from a log-spaced grid refined by a parabola through the best point and its
        neighbours; the linear coefficients are solved in closed form there.

        Parameters
        ----------
        data : Measured signal (signed for signed models). Shape `(pixels, phases)`.
        times_ms : Preparation times in ms. Shape `(phases,)`.
        weights : Weight of every phase of every pixel, shape `(pixels, phases)`; None for equal weights.

        Returns
        -------
        Parameters. Shape `(pixels, n_params)`.
        """
        grid = _log_grid(*self.relaxation_range_ms, data)
        grid_basis = self.linear_basis(grid, times_ms)
        if weights is None:
            explained = _explained_energy(data, grid_basis)
        else:
            explained = _weighted_explained_energy(data, grid_basis, weights)
        relaxation = _refined_minimum(grid, -explained)
        basis = self.linear_basis(relaxation, times_ms)
        weighted_basis = basis if weights is None else basis * weights[..., None]
        normal = weighted_basis.transpose(1, 2) @ basis
        coefficients = solve_small(normal, (weighted_basis * data[..., None]).sum(1))
        return self.from_linear(relaxation, coefficients)

    @abstractmethod
    def maps(self, params: torch.Tensor, covariance: torch.Tensor) -> dict[str, MapOutput]:
        """Return the reported maps with their SD from the parameter covariance (delta method).

        Parameters
        ----------
        params : Fitted parameters. Shape `(pixels, n_params)`.
        covariance : Their covariance. Shape `(pixels, n_params, n_params)`.

        Returns
        -------
        Map name (``T1``, ``T2``, ``PD`` ...) to value and SD, each shape `(pixels,)`.
        """

    @abstractmethod
    def tissue_parameters(
        self, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, *, inversion_efficiency: float
    ) -> dict[str, np.ndarray]:
        """Return the parameters that tissue of known relaxation times and proton density gives (the simulator's truth).

        Parameters
        ----------
        t1_ms : T1 in ms, positive. Shape `(...)`.
        t2_ms : T2 in ms, positive (inf for no decay). Shape `(...)`.
        pd : Proton density. Shape `(...)`.
        inversion_efficiency : Fraction of the longitudinal magnetisation an inversion inverts, in (0, 1]; only
            models of an inversion read it.

        Returns
        -------
        One array per parameter name (``signal_array``'s keywords), each shape `(...)`.
        """

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the parameters in order."""
        return tuple(p.name for p in self.parameters)

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return lower and upper bounds as tensors on ``like``'s device and dtype. Shapes `(n_params,)`."""
        lower = torch.tensor([p.lower for p in self.parameters], dtype=like.dtype, device=like.device)
        upper = torch.tensor([p.upper for p in self.parameters], dtype=like.dtype, device=like.device)
        return lower, upper

    def signal_array(self, times_ms: np.ndarray, **params: np.ndarray) -> np.ndarray:
        """Return the signal for numpy parameter maps (the simulator's entry point).

        Parameters
        ----------
        times_ms : Preparation times in ms. Shape `(phases,)`.
        **params : One array per parameter name, all of one shape `(...)`.

        Returns
        -------
        Signal, phases first. Shape `(phases, ...)` float64.
        """
        missing = set(self.parameter_names) - set(params)
        if missing or len(params) != len(self.parameters):
            raise ValueError(f"model {self.name} needs parameters {self.parameter_names}, got {tuple(params)}")
        stacked = np.stack(np.broadcast_arrays(*(np.asarray(params[n], np.float64) for n in self.parameter_names)), -1)
        out = self.signal(torch.from_numpy(stacked), torch.as_tensor(times_ms, dtype=torch.float64))
        return np.moveaxis(out.numpy(), -1, 0)


def _log_grid(low_ms: float, high_ms: float, like: torch.Tensor) -> torch.Tensor:
    """Return ``_GRID_SIZE`` log-spaced relaxation times in ms. Shape `(grid,)`."""
    return torch.logspace(np.log10(low_ms), np.log10(high_ms), _GRID_SIZE, dtype=like.dtype, device=like.device)


def _explained_energy(data: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Return ``||Q^T y||^2`` per pixel and grid point, ``Q`` an orthonormal basis of the point's columns.

    The least-squares residual at a grid point is ``||y||^2`` minus this, so one matrix product scores every pixel at
    every grid point.

    Parameters
    ----------
    data : Signal. Shape `(pixels, phases)`.
    basis : Linear basis at every grid point. Shape `(grid, phases, n_linear)`.

    Returns
    -------
    Explained energy. Shape `(pixels, grid)`.
    """
    q, _ = torch.linalg.qr(basis)
    n_grid, n_phases, n_linear = q.shape
    projections = (data @ q.permute(1, 0, 2).reshape(n_phases, n_grid * n_linear)).reshape(-1, n_grid, n_linear)
    explained = projections[..., 0] ** 2  # summed column by column: a strided sum over 1-2 columns is slow
    for column in range(1, n_linear):
        explained = explained + projections[..., column] ** 2
    return explained


def _weighted_explained_energy(data: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Return ``v^T M^-1 v`` with ``M = B^T W B``, ``v = B^T W y`` per pixel and grid point (per-pixel weights).

    Parameters
    ----------
    data : Signal. Shape `(pixels, phases)`.
    basis : Linear basis at every grid point. Shape `(grid, phases, n_linear)`.
    weights : Phase weights of every pixel. Shape `(pixels, phases)`.

    Returns
    -------
    Explained weighted energy. Shape `(pixels, grid)`.
    """
    n_linear = basis.shape[-1]
    v = torch.stack([(weights * data) @ basis[:, :, i].T for i in range(n_linear)], dim=-1)
    m = torch.stack(
        [
            torch.stack([weights @ (basis[:, :, i] * basis[:, :, j]).T for j in range(n_linear)], -1)
            for i in range(n_linear)
        ],
        dim=-2,
    )
    n_pixels, n_grid = v.shape[:2]
    flat_m = m.reshape(-1, n_linear, n_linear) + 1e-12 * torch.eye(n_linear, dtype=m.dtype, device=m.device)
    coefficients = solve_small(flat_m, v.reshape(-1, n_linear)).reshape(n_pixels, n_grid, n_linear)
    return (v * coefficients).sum(-1)


def _refined_minimum(grid: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Return, per pixel, the relaxation time of least residual: the best grid point refined by a parabola in log time.

    Parameters
    ----------
    grid : Log-spaced relaxation times in ms. Shape `(grid,)`.
    residual : Residual (up to a per-pixel constant) at every grid point. Shape `(pixels, grid)`.

    Returns
    -------
    Relaxation time in ms. Shape `(pixels,)`.
    """
    n_grid = grid.shape[0]
    centre = torch.argmin(residual, dim=1).clamp(1, n_grid - 2)
    pixels = torch.arange(residual.shape[0], device=residual.device)
    below, at, above = (residual[pixels, centre + k] for k in (-1, 0, 1))
    curvature = above - 2.0 * at + below
    offset = torch.where(curvature > 0, 0.5 * (below - above) / curvature.clamp(min=1e-300), torch.zeros_like(at))
    log_step = torch.log(grid[1] / grid[0])
    return grid[centre] * torch.exp(offset.clamp(-1.0, 1.0) * log_step)


def _offset_minus_decay_basis(relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
    """Return ``[1, -exp(-t / T)]``, the basis of the inversion-recovery shapes. Shape `(..., phases, 2)`."""
    decay = torch.exp(-times_ms / relaxation_ms[..., None])
    return torch.stack([torch.ones_like(decay), -decay], dim=-1)


def _delta_sd(gradient: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Return ``sqrt(g^T C g)`` per pixel. ``gradient`` shape `(pixels, n_params)`; returns `(pixels,)`."""
    variance = torch.einsum("np,npq,nq->n", gradient, covariance, gradient)
    return torch.sqrt(torch.clamp(variance, min=0.0))


def _parameter_map(params: torch.Tensor, covariance: torch.Tensor, index: int, unit: str) -> MapOutput:
    """Return one parameter as a map with the SD from the covariance's diagonal."""
    return MapOutput(params[:, index], torch.sqrt(torch.clamp(covariance[:, index, index], min=0.0)), unit)


class MolliModel(SignalModel):
    """MOLLI / Look-Locker: ``A - B exp(-TI / T1*)``, T1 = T1* (B / A - 1); signed, so polarity is restored first."""

    name = "molli"
    parameters = (
        Parameter("a", "a.u.", 0.0, np.inf, amplitude=True),
        Parameter("b", "a.u.", 0.0, np.inf, amplitude=True),
        Parameter("t1_star_ms", "ms", 1.0, 20000.0),
    )
    primary_map = "T1"
    signed = True

    def signal(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``A - B exp(-TI / T1*)``. Shape `(..., phases)`."""
        a, b, t1s = params[..., 0:1], params[..., 1:2], params[..., 2:3]
        return a - b * torch.exp(-times_ms / t1s)

    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the derivatives by A, B and T1*. Shape `(..., phases, 3)`."""
        b, t1s = params[..., 1:2], params[..., 2:3]
        decay = torch.exp(-times_ms / t1s)
        return torch.stack(
            [torch.ones_like(decay), -decay, -b * decay * times_ms / t1s**2],
            dim=-1,
        )

    relaxation_range_ms = (20.0, 6000.0)

    def linear_basis(self, relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``[1, -exp(-TI / T1*)]``. Shape `(..., phases, 2)`."""
        return _offset_minus_decay_basis(relaxation_ms, times_ms)

    def from_linear(self, relaxation_ms: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Return ``(A, B, T1*)``."""
        return torch.stack([coefficients[:, 0].clamp(min=0.0), coefficients[:, 1].clamp(min=0.0), relaxation_ms], -1)

    def maps(self, params: torch.Tensor, covariance: torch.Tensor) -> dict[str, MapOutput]:
        """Return T1 (ms, Look-Locker corrected), T1* (ms), A and B, each with its SD."""
        a, b, t1s = params[:, 0], params[:, 1], params[:, 2]
        safe_a = torch.where(a > 0, a, torch.ones_like(a))
        ratio = b / safe_a
        t1 = torch.where(a > 0, t1s * (ratio - 1.0), torch.zeros_like(a))
        gradient = torch.stack([-t1s * b / safe_a**2, t1s / safe_a, ratio - 1.0], dim=-1)
        return {
            "T1": MapOutput(t1, _delta_sd(gradient, covariance), "ms"),
            "T1star": _parameter_map(params, covariance, 2, "ms"),
            "A": _parameter_map(params, covariance, 0, "a.u."),
            "B": _parameter_map(params, covariance, 1, "a.u."),
        }

    def tissue_parameters(
        self, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, *, inversion_efficiency: float
    ) -> dict[str, np.ndarray]:
        """Return ``(A, B, T1*)`` whose Look-Locker correction gives back ``t1_ms`` (``molli_parameters_from_t1``)."""
        a, b, t1_star_ms = molli_parameters_from_t1(t1_ms, pd, inversion_efficiency)
        return {"a": a, "b": b, "t1_star_ms": t1_star_ms}


class T2PrepModel(SignalModel):
    """T2 preparation: ``M0 exp(-TEprep / T2)``."""

    name = "t2prep"
    parameters = (Parameter("m0", "a.u.", 0.0, np.inf, amplitude=True), Parameter("t2_ms", "ms", 0.5, 5000.0))
    primary_map = "T2"
    signed = False

    def signal(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``M0 exp(-TE / T2)``. Shape `(..., phases)`."""
        return params[..., 0:1] * torch.exp(-times_ms / params[..., 1:2])

    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the derivatives by M0 and T2. Shape `(..., phases, 2)`."""
        m0, t2 = params[..., 0:1], params[..., 1:2]
        decay = torch.exp(-times_ms / t2)
        return torch.stack([decay, m0 * decay * times_ms / t2**2], dim=-1)

    relaxation_range_ms = (2.0, 3000.0)

    def linear_basis(self, relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``[exp(-TE / T2)]``. Shape `(..., phases, 1)`."""
        return torch.exp(-times_ms / relaxation_ms[..., None])[..., None]

    def from_linear(self, relaxation_ms: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Return ``(M0, T2)``."""
        return torch.stack([coefficients[:, 0].clamp(min=0.0), relaxation_ms], dim=-1)

    def maps(self, params: torch.Tensor, covariance: torch.Tensor) -> dict[str, MapOutput]:
        """Return T2 (ms) and M0 with their SD."""
        return {
            "T2": _parameter_map(params, covariance, 1, "ms"),
            "M0": _parameter_map(params, covariance, 0, "a.u."),
        }

    def tissue_parameters(
        self, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, *, inversion_efficiency: float
    ) -> dict[str, np.ndarray]:
        """Return ``(M0, T2)``: M0 is the proton density."""
        return {"m0": pd, "t2_ms": t2_ms}


class T2PrepOffsetModel(SignalModel):
    """T2 preparation with an offset: ``M0 exp(-TEprep / T2) + C`` (recovery during the readout, Rician floor)."""

    name = "t2prep_offset"
    parameters = (
        Parameter("m0", "a.u.", 0.0, np.inf, amplitude=True),
        Parameter("t2_ms", "ms", 0.5, 5000.0),
        Parameter("offset", "a.u.", -np.inf, np.inf, amplitude=True),
    )
    primary_map = "T2"
    signed = False

    def signal(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``M0 exp(-TE / T2) + C``. Shape `(..., phases)`."""
        return params[..., 0:1] * torch.exp(-times_ms / params[..., 1:2]) + params[..., 2:3]

    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the derivatives by M0, T2 and C. Shape `(..., phases, 3)`."""
        m0, t2 = params[..., 0:1], params[..., 1:2]
        decay = torch.exp(-times_ms / t2)
        return torch.stack([decay, m0 * decay * times_ms / t2**2, torch.ones_like(decay)], dim=-1)

    relaxation_range_ms = (2.0, 3000.0)

    def linear_basis(self, relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``[exp(-TE / T2), 1]``. Shape `(..., phases, 2)`."""
        decay = torch.exp(-times_ms / relaxation_ms[..., None])
        return torch.stack([decay, torch.ones_like(decay)], dim=-1)

    def from_linear(self, relaxation_ms: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Return ``(M0, T2, C)``."""
        return torch.stack([coefficients[:, 0].clamp(min=0.0), relaxation_ms, coefficients[:, 1]], dim=-1)

    def maps(self, params: torch.Tensor, covariance: torch.Tensor) -> dict[str, MapOutput]:
        """Return T2 (ms), M0 and the offset with their SD."""
        return {
            "T2": _parameter_map(params, covariance, 1, "ms"),
            "M0": _parameter_map(params, covariance, 0, "a.u."),
            "Offset": _parameter_map(params, covariance, 2, "a.u."),
        }

    def tissue_parameters(
        self, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, *, inversion_efficiency: float
    ) -> dict[str, np.ndarray]:
        """Return ``(M0, T2, C)`` without an offset: M0 is the proton density, C is 0."""
        return {"m0": pd, "t2_ms": t2_ms, "offset": np.zeros(np.shape(pd))}


class InversionRecoveryModel(SignalModel):
    """Inversion recovery, as the qMRI Diffusor paper: ``PD (1 - B exp(-TI / T1))``, B about 2 for a full inversion.

    The paper's model is the magnitude ``|PD (1 - B exp(-TI / T1))|``; magnitude data are fitted with their polarity
    restored (``signed``), which finds the global minimum of the magnitude fit where a fit of ``|.|`` itself stops
    in local minima near the null point (as Barral et al.'s RD-NLS-PR).
    """

    name = "inversion_recovery"
    parameters = (
        Parameter("pd", "a.u.", 0.0, np.inf, amplitude=True),
        Parameter("b", "1", 0.0, 3.0),
        Parameter("t1_ms", "ms", 1.0, 20000.0),
    )
    primary_map = "T1"
    signed = True

    def signal(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``PD (1 - B exp(-TI / T1))``. Shape `(..., phases)`."""
        pd, b, t1 = params[..., 0:1], params[..., 1:2], params[..., 2:3]
        return pd * (1.0 - b * torch.exp(-times_ms / t1))

    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the derivatives by PD, B and T1. Shape `(..., phases, 3)`."""
        pd, b, t1 = params[..., 0:1], params[..., 1:2], params[..., 2:3]
        decay = torch.exp(-times_ms / t1)
        return torch.stack([1.0 - b * decay, -pd * decay, -pd * b * decay * times_ms / t1**2], dim=-1)

    relaxation_range_ms = (10.0, 6000.0)

    def linear_basis(self, relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``[1, -exp(-TI / T1)]`` (coefficients ``PD`` and ``PD * B``). Shape `(..., phases, 2)`."""
        return _offset_minus_decay_basis(relaxation_ms, times_ms)

    def from_linear(self, relaxation_ms: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Return ``(PD, B, T1)``."""
        pd = coefficients[:, 0].clamp(min=torch.finfo(coefficients.dtype).tiny)
        return torch.stack([pd, (coefficients[:, 1] / pd).clamp(0.0, 3.0), relaxation_ms], dim=-1)

    def maps(self, params: torch.Tensor, covariance: torch.Tensor) -> dict[str, MapOutput]:
        """Return T1 (ms), PD and the inversion efficiency B with their SD."""
        return {
            "T1": _parameter_map(params, covariance, 2, "ms"),
            "PD": _parameter_map(params, covariance, 0, "a.u."),
            "B": _parameter_map(params, covariance, 1, "1"),
        }

    def tissue_parameters(
        self, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, *, inversion_efficiency: float
    ) -> dict[str, np.ndarray]:
        """Return ``(PD, B, T1)`` with ``B = 1 + inversion_efficiency`` (2 for a perfect inversion)."""
        return {"pd": pd, "b": np.full(np.shape(t1_ms), 1.0 + inversion_efficiency), "t1_ms": t1_ms}


class SaturationRecoveryModel(SignalModel):
    """Saturation recovery (e.g. SASHA): ``M0 (1 - exp(-TS / T1))`` with TS the saturation delay."""

    name = "saturation_recovery"
    parameters = (Parameter("m0", "a.u.", 0.0, np.inf, amplitude=True), Parameter("t1_ms", "ms", 1.0, 20000.0))
    primary_map = "T1"
    signed = False

    def signal(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``M0 (1 - exp(-TS / T1))``. Shape `(..., phases)`."""
        return params[..., 0:1] * (1.0 - torch.exp(-times_ms / params[..., 1:2]))

    def jacobian(self, params: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return the derivatives by M0 and T1. Shape `(..., phases, 2)`."""
        m0, t1 = params[..., 0:1], params[..., 1:2]
        decay = torch.exp(-times_ms / t1)
        return torch.stack([1.0 - decay, -m0 * decay * times_ms / t1**2], dim=-1)

    relaxation_range_ms = (10.0, 6000.0)

    def linear_basis(self, relaxation_ms: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
        """Return ``[1 - exp(-TS / T1)]``. Shape `(..., phases, 1)`."""
        return (1.0 - torch.exp(-times_ms / relaxation_ms[..., None]))[..., None]

    def from_linear(self, relaxation_ms: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Return ``(M0, T1)``."""
        return torch.stack([coefficients[:, 0].clamp(min=0.0), relaxation_ms], dim=-1)

    def maps(self, params: torch.Tensor, covariance: torch.Tensor) -> dict[str, MapOutput]:
        """Return T1 (ms) and M0 with their SD."""
        return {
            "T1": _parameter_map(params, covariance, 1, "ms"),
            "M0": _parameter_map(params, covariance, 0, "a.u."),
        }

    def tissue_parameters(
        self, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, *, inversion_efficiency: float
    ) -> dict[str, np.ndarray]:
        """Return ``(M0, T1)`` of a perfect saturation: M0 is the proton density."""
        return {"m0": pd, "t1_ms": t1_ms}


MODELS: dict[str, SignalModel] = {
    model.name: model
    for model in (MolliModel(), T2PrepModel(), T2PrepOffsetModel(), InversionRecoveryModel(), SaturationRecoveryModel())
}
"""Every signal model by the name chains use."""


def signal_model(name: str) -> SignalModel:
    """Return the model called ``name``; the error lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown signal model {name!r}; known: {', '.join(MODELS)}") from None


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
