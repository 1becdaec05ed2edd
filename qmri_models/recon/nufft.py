"""Non-uniform FFT (NUFFT) for spiral readouts: one operator over finufft, cufinufft and sigpy, and Pipe-Menon DCF.

Convention (sigpy's, so every backend gives the same numbers)
--------------------------------------------------------------
``coord`` holds the k-space positions, shape `(*sample_dims, 2)` ordered ``(ky, kx)``, in cycles per field of view,
within ``[-n/2, n/2]`` per axis (positions beyond alias periodically, as they do in the DFT below; more than ``n``
away from the centre is refused as a units mistake). The image grid `(y, x)` of shape ``(ny, nx)`` has its origin at
pixel ``(ny // 2, nx // 2)``. With ``N = ny * nx``, the forward operator (type 2) is the unitary-scaled DFT

    kdata[..., j] = N^(-1/2) sum_{p, q} img[..., p, q] exp(-2 pi i (ky_j (p - ny // 2) / ny + kx_j (q - nx // 2) / nx))

and the adjoint (type 1) is its conjugate transpose (``+`` in the exponent, the same scale). On the Cartesian grid
``k = integer - n // 2`` the forward operator is the centred orthonormal FFT of ``recon.cartesian.centered_fft2``.

Backends compute in complex64 (float32 coordinates), reach about 1e-5 relative error at best, and are chosen by name:
``finufft`` (CPU), ``cufinufft`` (CUDA) and ``sigpy`` (numpy on CPU, cupy on CUDA; a Kaiser-Bessel kernel on a
2x grid, its width picked from ``eps`` by finufft's rule). ``auto`` is finufft on CPU (measured 3-7x faster than
sigpy at equal eps, 7x at the default, ``bench/bench_nufft.py``) and cufinufft on CUDA (sigpy with cupy when
cufinufft is missing; not measured on a GPU yet).
"""

import importlib.util
import math
from typing import Any, Literal, Protocol, overload

import finufft
import numpy as np
import sigpy as sp
import sigpy.mri as sp_mri
import torch

from qmri_models.device import torch_device

NUFFT_BACKENDS: tuple[str, ...] = ("finufft", "cufinufft", "sigpy")
"""Backend names ``NufftOp`` takes (besides ``auto``)."""
Backend = Literal["auto", "finufft", "cufinufft", "sigpy"]

DEFAULT_EPS = 2e-5
"""Requested relative tolerance. Measured (``bench/bench_nufft.py``, 256x256, 102k spiral samples, 8 coils) finufft
reaches 2.4e-5 at 2e-5 and is about 3x faster there than at 1e-5 (which picks a 2x grid and only reaches 1.4e-5, the
complex64 floor); 1e-4 reaches 7.8e-5, too near the 1e-4 target."""

MIN_EPS = 1e-6
"""Smallest tolerance taken: complex64 transforms do not get below about 1e-5 relative error."""

GPU_HINT = "pip install 'qmri-gadgets[gpu]'"

_DCF_KERNEL_WIDTH = 4.0
_DCF_KERNEL_BETA = 8.0
_SIGPY_OVERSAMP = 2.0


class _BackendOp(Protocol):
    """One backend's transforms on flat, contiguous complex64 tensors on the operator's device."""

    def type2(self, img: torch.Tensor) -> torch.Tensor:
        """Forward: images `(batch, y, x)` to samples `(batch, n_samples)`."""
        ...

    def type1(self, kdata: torch.Tensor) -> torch.Tensor:
        """Adjoint: samples `(batch, n_samples)` to images `(batch, y, x)`."""
        ...


def default_backend(device: torch.device | str) -> str:
    """Return the backend ``auto`` picks on ``device``: finufft on CPU; cufinufft on CUDA, else sigpy with cupy.

    Parameters
    ----------
    device : The device the data live on.

    Returns
    -------
    One of ``NUFFT_BACKENDS``.

    Raises
    ------
    ValueError
        If the device is neither CPU nor CUDA.
    """
    device_type = torch.device(device).type
    if device_type == "cpu":
        return "finufft"
    if device_type == "cuda":
        return "cufinufft" if importlib.util.find_spec("cufinufft") is not None else "sigpy"
    raise ValueError(f"no NUFFT backend for device {device!s}; use cpu or cuda")


class NufftOp:
    """2D NUFFT operator on a fixed trajectory (the module docstring states the convention and scaling).

    Batch dimensions (coils, subspace coefficients, phases) go through the library's many-vector transforms in one
    call. Plans are made once per transform type and batch size and reused, so iterative reconstructions pay the
    planning and point sorting once. Computation is in complex64 with float32 coordinates; inputs of other dtypes
    are cast. The operator does not take part in autograd (inputs are detached).

    Parameters
    ----------
    coord : k-space positions ``(ky, kx)`` in cycles per field of view. Shape `(*sample_dims, 2)`.
    image_shape : Image size ``(ny, nx)`` in pixels.
    backend : ``auto`` (``default_backend`` of the device) or one of ``NUFFT_BACKENDS``.
    eps : Requested relative tolerance, at least ``MIN_EPS``.
    device : Where the data live (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a device); None is coord's device
        (CPU for a numpy array).

    Attributes
    ----------
    image_shape : Image size ``(ny, nx)``.
    sample_shape : Sample dimensions of ``coord``, ``coord.shape[:-1]``.
    backend : The backend in use, one of ``NUFFT_BACKENDS``.
    device : The device inputs must be on and outputs are returned on.
    eps : The requested tolerance.
    """

    def __init__(
        self,
        coord: np.ndarray | torch.Tensor,
        image_shape: tuple[int, int],
        *,
        backend: Backend = "auto",
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
    ) -> None:
        self.device = _resolve_device(coord, device)
        self.backend = default_backend(self.device) if backend == "auto" else backend
        if self.backend not in NUFFT_BACKENDS:
            raise ValueError(f"unknown NUFFT backend {backend!r}; choose auto or one of {', '.join(NUFFT_BACKENDS)}")
        if self.backend == "finufft" and self.device.type != "cpu":
            raise ValueError(f"the finufft backend runs on the CPU, not on {self.device}; use cufinufft or sigpy")
        if self.backend == "cufinufft" and self.device.type != "cuda":
            raise ValueError(f"the cufinufft backend runs on CUDA, not on {self.device}; use finufft or sigpy")
        if not MIN_EPS <= eps < 1:
            raise ValueError(f"eps must be in [{MIN_EPS:g}, 1), got {eps!r}")
        self.image_shape = _check_image_shape(image_shape)
        points = _check_coord(coord, self.image_shape)
        self.sample_shape: tuple[int, ...] = points.shape[:-1]
        self.eps = float(eps)
        flat = points.reshape(-1, 2)
        self._op: _BackendOp
        if self.backend == "finufft":
            self._op = _Finufft(flat, self.image_shape, self.eps)
        elif self.backend == "cufinufft":
            self._op = _Cufinufft(flat, self.image_shape, self.eps, self.device)
        else:
            self._op = _Sigpy(flat, self.image_shape, self.eps, self.device)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Return the k-space samples of images (type-2 NUFFT).

        Parameters
        ----------
        img : Images. Shape `(*batch, y, x)` complex, on ``device``.

        Returns
        -------
        k-space samples. Shape `(*batch, *sample_dims)` complex64.
        """
        flat, batch = self._flatten(img, "img", self.image_shape)
        kdata = self._op.type2(flat) if len(flat) else flat.new_zeros((0, math.prod(self.sample_shape)))
        return kdata.reshape(*batch, *self.sample_shape)

    def adjoint(self, kdata: torch.Tensor) -> torch.Tensor:
        """Return the adjoint NUFFT (type 1) of k-space samples: gridding without density compensation.

        Parameters
        ----------
        kdata : k-space samples. Shape `(*batch, *sample_dims)` complex, on ``device``.

        Returns
        -------
        Images. Shape `(*batch, y, x)` complex64.
        """
        flat, batch = self._flatten(kdata, "kdata", self.sample_shape)
        flat = flat.reshape(len(flat), -1)
        img = self._op.type1(flat) if len(flat) else flat.new_zeros((0, *self.image_shape))
        return img.reshape(*batch, *self.image_shape)

    def _flatten(self, x: torch.Tensor, name: str, tail: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Return ``x`` as a contiguous complex64 tensor `(batch, *tail)` and its batch shape, after checks."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the NUFFT operator on {self.device}; move one of them")
        if x.ndim < len(tail) or tuple(x.shape[x.ndim - len(tail) :]) != tail:
            dims = ", ".join(str(n) for n in tail)
            raise ValueError(f"{name} must have shape (*batch, {dims}), got {tuple(x.shape)}")
        batch = tuple(x.shape[: x.ndim - len(tail)])
        flat = x.detach().to(torch.complex64).resolve_conj().reshape(-1, *tail).contiguous()
        return flat, batch


@overload
def density_compensation(coord: np.ndarray, image_shape: tuple[int, int], *, max_iter: int = 30) -> np.ndarray: ...


@overload
def density_compensation(coord: torch.Tensor, image_shape: tuple[int, int], *, max_iter: int = 30) -> torch.Tensor: ...


def density_compensation(
    coord: np.ndarray | torch.Tensor, image_shape: tuple[int, int], *, max_iter: int = 30
) -> np.ndarray | torch.Tensor:
    """Return Pipe-Menon density compensation weights (``sigpy.mri.pipe_menon_dcf``, computed on the CPU).

    The weights are the k-space area each sample stands for, in (cycles per field of view)^2: 1 for every sample of
    a fully sampled Cartesian grid. Then ``op.adjoint(dcf * op.forward(img))`` approximates ``img`` at its own
    scale (exactly on the Cartesian grid), for images whose spectrum lies inside the sampled region. sigpy's
    iteration ``w <- w / |G^H G w|`` equalises the doubly gridded density, so its weights are scaled by the square of
    the gridding kernel's sum over the grid.

    Parameters
    ----------
    coord : k-space positions ``(ky, kx)`` in cycles per field of view, as for ``NufftOp``. Shape `(*sample_dims, 2)`.
    image_shape : Image size ``(ny, nx)`` in pixels.
    max_iter : Pipe-Menon iterations.

    Returns
    -------
    Weights, numpy for a numpy ``coord``, else a tensor on coord's device. Shape `(*sample_dims,)` float32.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    shape = _check_image_shape(image_shape)
    points = _check_coord(coord, shape)
    weights = sp_mri.pipe_menon_dcf(
        points,
        img_shape=shape,
        max_iter=max_iter,
        beta=_DCF_KERNEL_BETA,
        width=_DCF_KERNEL_WIDTH,
        show_pbar=False,
    )
    gridding = sp.linop.Gridding(
        shape, np.zeros((1, 2), np.float32), kernel="kaiser_bessel", width=_DCF_KERNEL_WIDTH, param=_DCF_KERNEL_BETA
    )
    kernel_sum = float(np.sum(gridding(np.ones(1, np.float32))))
    dcf = np.asarray(weights * kernel_sum**2, dtype=np.float32)
    if isinstance(coord, torch.Tensor):
        return torch.from_numpy(dcf).to(coord.device)
    return dcf


class _Finufft:
    """finufft on the CPU: single-precision plans, one per (type, batch size), points set once."""

    def __init__(self, coord: np.ndarray, image_shape: tuple[int, int], eps: float) -> None:
        self._image_shape = image_shape
        self._eps = eps
        self._points = _radians(coord, image_shape)
        self._scale = 1.0 / math.sqrt(math.prod(image_shape))
        self._plans: dict[tuple[int, int], Any] = {}

    def _plan(self, nufft_type: int, n_trans: int) -> Any:
        plan = self._plans.get((nufft_type, n_trans))
        if plan is None:
            isign = -1 if nufft_type == 2 else 1
            plan = finufft.Plan(nufft_type, self._image_shape, n_trans, self._eps, isign, dtype="complex64")
            plan.setpts(*self._points)
            self._plans[nufft_type, n_trans] = plan
        return plan

    def type2(self, img: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._plan(2, len(img)).execute(img.numpy())).mul_(self._scale)

    def type1(self, kdata: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._plan(1, len(kdata)).execute(kdata.numpy())).mul_(self._scale)


class _Cufinufft:
    """cufinufft on CUDA, on torch tensors through the CUDA array interface; plans as for ``_Finufft``."""

    def __init__(self, coord: np.ndarray, image_shape: tuple[int, int], eps: float, device: torch.device) -> None:
        try:
            import cufinufft
        except ImportError as exc:
            raise ImportError(f"the cufinufft NUFFT backend needs cufinufft: {GPU_HINT}") from exc
        self._cufinufft = cufinufft
        self._image_shape = image_shape
        self._eps = eps
        self._device = device
        self._points = tuple(torch.from_numpy(p).to(device) for p in _radians(coord, image_shape))
        self._scale = 1.0 / math.sqrt(math.prod(image_shape))
        self._plans: dict[tuple[int, int], Any] = {}

    def _plan(self, nufft_type: int, n_trans: int) -> Any:
        plan = self._plans.get((nufft_type, n_trans))
        if plan is None:
            isign = -1 if nufft_type == 2 else 1
            plan = self._cufinufft.Plan(
                nufft_type,
                self._image_shape,
                n_trans,
                self._eps,
                isign,
                dtype="complex64",
                gpu_device_id=self._device.index,
            )
            plan.setpts(*self._points)
            self._plans[nufft_type, n_trans] = plan
        return plan

    def type2(self, img: torch.Tensor) -> torch.Tensor:
        out = img.new_empty((len(img), len(self._points[0])))
        self._plan(2, len(img)).execute(img, out=out)
        return out.mul_(self._scale)

    def type1(self, kdata: torch.Tensor) -> torch.Tensor:
        out = kdata.new_empty((len(kdata), *self._image_shape))
        self._plan(1, len(kdata)).execute(kdata, out=out)
        return out.mul_(self._scale)


class _Sigpy:
    """sigpy's Kaiser-Bessel NUFFT on a 2x grid, numpy on the CPU and cupy on CUDA (zero-copy through DLPack)."""

    def __init__(self, coord: np.ndarray, image_shape: tuple[int, int], eps: float, device: torch.device) -> None:
        self._image_shape = image_shape
        self._width = math.ceil(math.log10(1 / eps)) + 1
        if device.type == "cuda":
            try:
                import cupy
            except ImportError as exc:
                raise ImportError(f"the sigpy NUFFT backend on CUDA needs cupy: {GPU_HINT}") from exc
            self._xp: Any = cupy
            self._sp_device = sp.Device(device.index)
        else:
            self._xp = np
            self._sp_device = sp.Device(-1)
        with self._sp_device:
            self._coord = self._xp.asarray(coord, dtype=np.float32)

    def _native(self, x: torch.Tensor) -> Any:
        return x.numpy() if self._xp is np else self._xp.from_dlpack(x)

    def _tensor(self, a: Any) -> torch.Tensor:
        a = a.astype(np.complex64, copy=False)
        return torch.from_numpy(a) if self._xp is np else torch.from_dlpack(a)

    def type2(self, img: torch.Tensor) -> torch.Tensor:
        with self._sp_device:
            kdata = sp.nufft(self._native(img), self._coord, oversamp=_SIGPY_OVERSAMP, width=self._width)
            return self._tensor(kdata)

    def type1(self, kdata: torch.Tensor) -> torch.Tensor:
        oshape = (len(kdata), *self._image_shape)
        with self._sp_device:
            img = sp.nufft_adjoint(
                self._native(kdata), self._coord, oshape=oshape, oversamp=_SIGPY_OVERSAMP, width=self._width
            )
            return self._tensor(img)


def _resolve_device(coord: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.device:
    """Return the operator's device, with an explicit CUDA index so it compares equal to tensors' devices."""
    if device is None:
        resolved = coord.device if isinstance(coord, torch.Tensor) else torch.device("cpu")
    elif isinstance(device, str):
        resolved = torch_device(device)
    else:
        resolved = device
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _check_image_shape(image_shape: tuple[int, int]) -> tuple[int, int]:
    """Return ``image_shape`` as a tuple of two positive ints, or raise ValueError."""
    shape = tuple(int(n) for n in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be two positive sizes (ny, nx), got {image_shape!r}")
    return shape[0], shape[1]


def _check_coord(coord: np.ndarray | torch.Tensor, image_shape: tuple[int, int]) -> np.ndarray:
    """Return ``coord`` as float32 numpy `(*sample_dims, 2)` on the CPU, after shape and range checks."""
    if isinstance(coord, torch.Tensor):
        if coord.is_complex():
            raise TypeError(f"coord must be real (ky, kx) pairs, got dtype {coord.dtype}")
        points = coord.detach().cpu().numpy()
    else:
        if np.iscomplexobj(coord):
            raise TypeError(f"coord must be real (ky, kx) pairs, got dtype {coord.dtype}")
        points = np.asarray(coord)
    if points.ndim < 2 or points.shape[-1] != 2 or points.size == 0:
        raise ValueError(f"coord must have shape (*sample_dims, 2) ordered (ky, kx), got {points.shape}")
    points = points.astype(np.float32)
    if not np.all(np.isfinite(points)):
        raise ValueError("coord has non-finite values")
    reach = np.abs(points.reshape(-1, 2)).max(axis=0)
    for axis, (name, n) in enumerate(zip(("ky", "kx"), image_shape, strict=True)):
        if reach[axis] > n:
            raise ValueError(
                f"coord {name} reaches {reach[axis]:g}, beyond +-{n} for a grid of {n}; "
                f"coordinates are in cycles per field of view, within [-{n / 2:g}, {n / 2:g}]"
            )
    return points


def _radians(coord: np.ndarray, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return finufft's points ``2 pi k / n`` per axis (``ky``, ``kx``) as contiguous float32. Shape `(n_samples,)`."""
    return (
        np.ascontiguousarray(coord[:, 0].astype(np.float64) * (2 * np.pi / image_shape[0]), dtype=np.float32),
        np.ascontiguousarray(coord[:, 1].astype(np.float64) * (2 * np.pi / image_shape[1]), dtype=np.float32),
    )
