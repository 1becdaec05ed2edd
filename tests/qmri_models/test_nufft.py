"""NUFFT backends against a direct non-uniform DFT, adjointness, shapes, and Pipe-Menon density compensation."""

import numpy as np
import pytest
import sigpy.mri as sp_mri
import torch

from qmri_models.recon.cartesian import centered_fft2
from qmri_models.recon.nufft import NUFFT_BACKENDS, NufftOp, default_backend, density_compensation

IMAGE_SHAPE = (20, 24)
N_SAMPLES = 300
N_BATCH = 3

BACKENDS = [
    pytest.param("finufft", "cpu", id="finufft-cpu"),
    pytest.param("sigpy", "cpu", id="sigpy-cpu"),
    pytest.param("cufinufft", "cuda", id="cufinufft-cuda", marks=pytest.mark.cuda),
    pytest.param("sigpy", "cuda", id="sigpy-cuda", marks=pytest.mark.cuda),
]


def make_op(backend: str, device: str, coord: np.ndarray, image_shape: tuple[int, int] = IMAGE_SHAPE) -> NufftOp:
    if backend == "cufinufft":
        pytest.importorskip("cufinufft", reason="cufinufft not installed (pip install 'qmri-gadgets[gpu]')")
    if backend == "sigpy" and device == "cuda":
        pytest.importorskip("cupy", reason="cupy not installed (pip install 'qmri-gadgets[gpu]')")
    return NufftOp(coord, image_shape, backend=backend, device=device)  # type: ignore[arg-type]


def random_coord(rng: np.random.Generator, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Uniform random (ky, kx) in [-n/2, n/2) cycles per field of view. Shape `(n_samples, 2)`."""
    ny, nx = IMAGE_SHAPE
    return np.stack([rng.uniform(-ny / 2, ny / 2, n_samples), rng.uniform(-nx / 2, nx / 2, n_samples)], axis=-1)


def random_complex(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def dft_matrix(coord: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """The direct non-uniform DFT of the module docstring, float64. Shape `(n_samples, ny * nx)`."""
    ny, nx = image_shape
    y = np.arange(ny) - ny // 2
    x = np.arange(nx) - nx // 2
    phase = coord[:, 0, None, None] * y[None, :, None] / ny + coord[:, 1, None, None] * x[None, None, :] / nx
    return np.exp(-2j * np.pi * phase).reshape(len(coord), -1) / np.sqrt(ny * nx)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
def test_forward_and_adjoint_match_direct_dft(backend: str, device: str) -> None:
    rng = np.random.default_rng(0)
    coord = random_coord(rng)
    img = random_complex(rng, (N_BATCH, *IMAGE_SHAPE))
    kdata = random_complex(rng, (N_BATCH, N_SAMPLES))
    dft = dft_matrix(coord, IMAGE_SHAPE)
    op = make_op(backend, device, coord)

    forward = op.forward(torch.from_numpy(img).to(device))
    adjoint = op.adjoint(torch.from_numpy(kdata).to(device))

    assert forward.dtype == adjoint.dtype == torch.complex64
    assert forward.device.type == adjoint.device.type == device
    assert relative_error(forward.cpu().numpy(), img.reshape(N_BATCH, -1) @ dft.T) < 1e-4
    expected_adjoint = (kdata @ dft.conj()).reshape(N_BATCH, *IMAGE_SHAPE)
    assert relative_error(adjoint.cpu().numpy(), expected_adjoint) < 1e-4


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
def test_adjoint_identity(backend: str, device: str) -> None:
    rng = np.random.default_rng(1)
    op = make_op(backend, device, random_coord(rng))
    x = torch.from_numpy(random_complex(rng, (N_BATCH, *IMAGE_SHAPE))).to(device)
    y = torch.from_numpy(random_complex(rng, (N_BATCH, N_SAMPLES))).to(device)

    ax = op.forward(x)
    lhs = torch.vdot(ax.flatten(), y.flatten()).item()
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten()).item()

    assert abs(lhs - rhs) / (torch.linalg.norm(ax) * torch.linalg.norm(y)).item() < 1e-5


@pytest.mark.parametrize(("backend", "device"), BACKENDS[1:])
def test_backend_agrees_with_finufft(backend: str, device: str) -> None:
    rng = np.random.default_rng(2)
    coord = random_coord(rng).reshape(10, 30, 2)
    img = random_complex(rng, (2, N_BATCH, *IMAGE_SHAPE))
    kdata = random_complex(rng, (2, N_BATCH, 10, 30))
    reference = NufftOp(coord, IMAGE_SHAPE, backend="finufft")
    op = make_op(backend, device, coord)

    forward = op.forward(torch.from_numpy(img).to(device)).cpu()
    adjoint = op.adjoint(torch.from_numpy(kdata).to(device)).cpu()

    assert relative_error(forward.numpy(), reference.forward(torch.from_numpy(img)).numpy()) < 1e-4
    assert relative_error(adjoint.numpy(), reference.adjoint(torch.from_numpy(kdata)).numpy()) < 1e-4


@pytest.mark.parametrize("backend", ["finufft", "sigpy"])
def test_batch_dims_and_sample_dims(backend: str) -> None:
    rng = np.random.default_rng(3)
    coord = random_coord(rng, 200).reshape(4, 50, 2)
    img = torch.from_numpy(random_complex(rng, (2, 3, *IMAGE_SHAPE)))
    op = NufftOp(coord, IMAGE_SHAPE, backend=backend)  # type: ignore[arg-type]

    batched = op.forward(img)
    one = op.forward(img[1, 2])

    assert batched.shape == (2, 3, 4, 50)
    assert one.shape == (4, 50)
    assert relative_error(batched[1, 2].numpy(), one.numpy()) < 1e-6
    assert op.adjoint(batched).shape == (2, 3, *IMAGE_SHAPE)
    assert op.adjoint(one).shape == IMAGE_SHAPE
    assert op.forward(img[:0]).shape == (0, 3, 4, 50)


def test_cartesian_grid_gives_the_centred_fft() -> None:
    rng = np.random.default_rng(4)
    ky, kx = np.meshgrid(
        np.arange(IMAGE_SHAPE[0]) - IMAGE_SHAPE[0] // 2, np.arange(IMAGE_SHAPE[1]) - IMAGE_SHAPE[1] // 2, indexing="ij"
    )
    img = random_complex(rng, (2, *IMAGE_SHAPE))
    op = NufftOp(np.stack([ky, kx], axis=-1), IMAGE_SHAPE)

    assert relative_error(op.forward(torch.from_numpy(img)).numpy(), centered_fft2(img)) < 1e-4


def test_inputs_are_cast_to_complex64() -> None:
    rng = np.random.default_rng(5)
    op = NufftOp(torch.from_numpy(random_coord(rng)), IMAGE_SHAPE)
    img = torch.from_numpy(random_complex(rng, IMAGE_SHAPE))

    double = op.forward(img.to(torch.complex128))
    real = op.forward(img.real)

    assert double.dtype == real.dtype == torch.complex64
    assert relative_error(double.numpy(), op.forward(img).numpy()) < 1e-6
    assert relative_error(real.numpy(), op.forward(img.real.to(torch.complex64)).numpy()) < 1e-6


def test_auto_backend_is_finufft_on_cpu() -> None:
    coord = random_coord(np.random.default_rng(6))

    assert default_backend("cpu") == "finufft"
    assert NufftOp(coord, IMAGE_SHAPE).backend == "finufft"
    assert NufftOp(torch.from_numpy(coord), IMAGE_SHAPE).device == torch.device("cpu")
    assert set(NUFFT_BACKENDS) == {"finufft", "cufinufft", "sigpy"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coord": np.zeros((10, 3))}, r"coord must have shape \(\*sample_dims, 2\).*\(10, 3\)"),
        ({"coord": np.zeros((0, 2))}, r"coord must have shape"),
        ({"coord": np.full((10, 2), 25.0)}, r"coord ky reaches 25.*cycles per field of view"),
        ({"coord": np.full((10, 2), np.nan)}, r"non-finite"),
        ({"image_shape": (20,)}, r"image_shape must be two positive sizes.*\(20,\)"),
        ({"image_shape": (20, 0)}, r"image_shape must be two positive sizes"),
        ({"eps": 1e-9}, r"eps must be in .*1e-09"),
        ({"backend": "nfft"}, r"unknown NUFFT backend 'nfft'"),
        ({"backend": "cufinufft"}, r"cufinufft backend runs on CUDA, not on cpu"),
        ({"backend": "finufft", "device": torch.device("meta")}, r"finufft backend runs on the CPU, not on meta"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    arguments = {"coord": np.zeros((10, 2)), "image_shape": IMAGE_SHAPE, **kwargs}
    coord, image_shape = arguments.pop("coord"), arguments.pop("image_shape")

    with pytest.raises(ValueError, match=match):
        NufftOp(coord, image_shape, **arguments)


def test_complex_coord_raises_type_error() -> None:
    with pytest.raises(TypeError, match="coord must be real"):
        NufftOp(np.zeros((10, 2), np.complex64), IMAGE_SHAPE)


def test_wrong_data_shapes_and_devices_raise() -> None:
    op = NufftOp(np.zeros((5, 10, 2)), IMAGE_SHAPE)

    with pytest.raises(ValueError, match=r"img must have shape \(\*batch, 20, 24\), got \(3, 24, 20\)"):
        op.forward(torch.zeros(3, 24, 20, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"kdata must have shape \(\*batch, 5, 10\), got \(3, 50\)"):
        op.adjoint(torch.zeros(3, 50, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"img is on meta but the NUFFT operator on cpu"):
        op.forward(torch.zeros(*IMAGE_SHAPE, dtype=torch.complex64, device="meta"))
    with pytest.raises(TypeError, match=r"img must be a torch\.Tensor, got ndarray"):
        op.forward(np.zeros(IMAGE_SHAPE, np.complex64))  # type: ignore[arg-type]


def test_dcf_is_one_on_a_cartesian_grid() -> None:
    ky, kx = np.meshgrid(np.arange(16) - 8, np.arange(16) - 8, indexing="ij")

    dcf = density_compensation(torch.from_numpy(np.stack([ky, kx], axis=-1)), (16, 16))

    assert isinstance(dcf, torch.Tensor)
    assert dcf.shape == (16, 16)
    torch.testing.assert_close(dcf, torch.ones(16, 16), rtol=1e-5, atol=0)


def test_dcf_gridding_of_a_spiral_reproduces_a_smooth_image() -> None:
    n = 32
    # sigpy's variable-density spiral (Kim 2003) for a 32-matrix, 8 interleaves, fully sampled at the edge (R = 1);
    # its coordinates come in 1/m and reach N / (2 fov), so times fov they are cycles per field of view.
    fov_m = 0.24
    coord = sp_mri.spiral(fov_m, n, 0.5, 1, 8, 1.5, 40e-3, 150) * fov_m
    coord = coord.reshape(8, -1, 2)
    yy, xx = np.mgrid[:n, :n] - n // 2
    img = np.exp(-(yy**2 + xx**2) / (2 * 4.0**2)) + 0.5 * np.exp(-((yy - 3) ** 2 + (xx + 4) ** 2) / (2 * 2.5**2))
    img = torch.from_numpy(img.astype(np.complex64))
    centre = torch.from_numpy((np.abs(yy) < n // 4) & (np.abs(xx) < n // 4))
    op = NufftOp(coord, (n, n))

    dcf = density_compensation(coord, (n, n))
    kdata = op.forward(img)
    gridded = op.adjoint(kdata * torch.from_numpy(dcf))
    plain = op.adjoint(kdata)
    best_scale = torch.vdot(plain[centre], img[centre]) / torch.vdot(plain[centre], plain[centre])

    def centre_error(recon: torch.Tensor) -> float:
        return (torch.linalg.norm((recon - img)[centre]) / torch.linalg.norm(img[centre])).item()

    assert dcf.shape == coord.shape[:-1]
    # Weights are k-space area per sample: they add up to about the sampled disc (measured 1.07x, edge included).
    assert 0.95 < dcf.sum() / (np.pi * (n / 2) ** 2) < 1.15
    # Measured: 0.013 with the weights at their own scale, 0.29 without them even at the best scale.
    assert centre_error(gridded) < 0.03
    assert centre_error(best_scale * plain) > 0.2
