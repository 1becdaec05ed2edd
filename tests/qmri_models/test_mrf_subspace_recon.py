"""Subspace reconstruction of streamed spiral MRF readouts: the accumulation algebra, the operator, the sensitivities,
SVDMRF, low-rank CG and ADMM."""

import numpy as np
import pytest
import torch

from qmri_models.mrf.subspace_accumulator import SubspaceAccumulator
from qmri_models.mrf.subspace_algorithms import dictionary_admm, low_rank_cg, svdmrf
from qmri_models.mrf.subspace_calibration import subspace_sensitivities
from qmri_models.mrf.subspace_operator import SubspaceGridding, SubspaceOperator
from qmri_models.recon.nufft import NufftOp, density_compensation
from qmri_models.simulation.coils import coil_sensitivities
from qmri_models.simulation.spiral import SpiralDesign, frame_rotations, rotate

MATRIX = 32
N_FRAMES = 40
RANK = 3
N_COILS = 4


def _basis(rng: np.random.Generator) -> np.ndarray:
    """Orthonormal temporal basis of smooth curves. Shape `(frames, rank)` complex64."""
    t = np.linspace(0, 1, N_FRAMES)[:, None]
    curves = np.hstack([np.exp(-t * rate) * np.cos(freq * t) for rate, freq in ((1, 0), (3, 4), (8, 9))])
    curves = curves + 0.05 * rng.standard_normal(curves.shape)
    return np.linalg.qr(curves)[0].astype(np.complex64)


def _coefficients() -> np.ndarray:
    """Smooth coefficient images inside a disc. Shape `(rank, y, x)` complex64."""
    y, x = np.mgrid[-1 : 1 : MATRIX * 1j, -1 : 1 : MATRIX * 1j]
    disc = (x**2 + y**2 < 0.7).astype(np.float32)
    images = [disc * (1 + 0.5 * x), disc * np.exp(-((x - 0.2) ** 2 + y**2) * 4), disc * (0.3 * y + 0.2j * x)]
    return np.asarray(images, dtype=np.complex64)


def _scan(
    ordering: str, rng: np.random.Generator, truth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """Return (basis, sens, readouts as (frame, coord, data), true coefficients) of a small noise-free scan."""
    basis = _basis(rng)
    truth = _coefficients() if truth is None else truth
    sens = coil_sensitivities(N_COILS, MATRIX, rng)
    design = SpiralDesign(matrix=MATRIX, n_interleaves=8, fov_mm=200.0)
    rotations = frame_rotations(N_FRAMES, design.n_interleaves, ordering)  # type: ignore[arg-type]
    coords = rotate(design.interleaf(), rotations.angle_rad).astype(np.float32)
    series = np.einsum("tk,kyx->tyx", basis, truth)
    readouts = []
    for t in range(N_FRAMES):
        op = NufftOp(coords[t], (MATRIX, MATRIX))
        data = op.forward(torch.from_numpy(series[t][None] * sens)).numpy()
        readouts.append((t, coords[t], data))
    return basis, sens, readouts, truth


def _accumulate(basis: np.ndarray, readouts: list, buffer: int = 6) -> SubspaceAccumulator:
    accumulator = SubspaceAccumulator(
        basis, n_coils=N_COILS, n_samples=readouts[0][2].shape[-1], image_shape=(MATRIX, MATRIX), buffer_frames=buffer
    )
    for frame, coord, data in readouts:
        accumulator.add(frame, coord, data)
    return accumulator


def test_accumulated_adjoint_equals_gridding_every_frame_then_projecting() -> None:
    """SVDMRF from the streamed state equals the textbook one: grid each frame with its DCF, project the series."""
    rng = np.random.default_rng(0)
    basis, sens, readouts, _ = _scan("fixed", rng)
    accumulator = _accumulate(basis, readouts)
    kspace = accumulator.result()
    assert accumulator.n_slots == 8
    assert kspace.n_frames == N_FRAMES
    fast = svdmrf(
        SubspaceOperator(SubspaceGridding(kspace, (MATRIX, MATRIX), device="cpu"), kspace, sens), kspace
    ).numpy()

    frames = []
    # every interleaf is a rotation of the first: the same weights (Pipe-Menon is rotation-invariant up to its grid)
    weights = torch.from_numpy(density_compensation(readouts[0][1], (MATRIX, MATRIX)))
    for _, coord, data in readouts:
        op = NufftOp(coord, (MATRIX, MATRIX))
        coil_images = op.adjoint(weights * torch.from_numpy(data)).numpy()
        frames.append((sens.conj() * coil_images).sum(axis=0))
    slow = np.einsum("tk,tyx->kyx", basis.conj(), np.asarray(frames))
    assert np.linalg.norm(fast - slow) / np.linalg.norm(slow) < 1e-4


def test_state_is_k_coil_images_whatever_the_buffer_and_the_frames() -> None:
    """The gridded state does not depend on how readouts are batched, and it does not grow with the frames.

    (At 32^2 the calibration square is the whole k-space; bench/bench_mrf.py shows the state against the K coil
    images at 256^2.)
    """
    rng = np.random.default_rng(7)
    basis, _, readouts, _ = _scan("fixed", rng)
    reference = _accumulate(basis, readouts, buffer=1).result().coil_images
    for buffer in (7, 100):
        other = _accumulate(basis, readouts, buffer=buffer).result().coil_images
        assert torch.linalg.vector_norm(other - reference) < 1e-4 * torch.linalg.vector_norm(reference)  # NUFFT eps
    images = RANK * N_COILS * MATRIX * MATRIX * 8
    half, whole = _accumulate(basis, readouts[: N_FRAMES // 2], buffer=1), _accumulate(basis, readouts, buffer=1)
    assert half.nbytes == whole.nbytes  # every slot seen by then: nothing grows with the frames
    assert whole.nbytes > images


def test_normal_operator_is_hermitian_and_positive() -> None:
    rng = np.random.default_rng(1)
    basis, sens, readouts, _ = _scan("fixed", rng)
    kspace = _accumulate(basis, readouts).result()
    operator = SubspaceOperator(SubspaceGridding(kspace, (MATRIX, MATRIX), device="cpu"), kspace, sens)
    u = torch.from_numpy((rng.standard_normal((RANK, MATRIX, MATRIX)) + 1j).astype(np.complex64))
    v = torch.from_numpy((rng.standard_normal((RANK, MATRIX, MATRIX)) * 1j + 0.5).astype(np.complex64))
    left = torch.vdot(u.flatten(), operator.normal(v).flatten())
    right = torch.vdot(operator.normal(u).flatten(), v.flatten())
    assert abs(complex(left - right)) / abs(complex(left)) < 1e-4
    assert torch.vdot(u.flatten(), operator.normal(u).flatten()).real > 0


@pytest.mark.parametrize("ordering", ["fixed", "golden"])
def test_low_rank_cg_recovers_the_coefficients_svdmrf_cannot(ordering: str) -> None:
    """Eight interleaves undersample a 32^2 spiral per frame: SVDMRF keeps the aliasing, CG removes most of it."""
    rng = np.random.default_rng(2)
    basis, sens, readouts, truth = _scan(ordering, rng)
    accumulator = _accumulate(basis, readouts)
    assert accumulator.n_slots == (8 if ordering == "fixed" else N_FRAMES)
    kspace = accumulator.result()
    operator = SubspaceOperator(SubspaceGridding(kspace, (MATRIX, MATRIX), device="cpu"), kspace, sens)
    inside = np.abs(truth[0]) > 0

    def error(estimate: torch.Tensor) -> float:
        diff = (estimate.numpy() - truth)[:, inside]
        return float(np.linalg.norm(diff) / np.linalg.norm(truth[:, inside]))

    residuals: list[float] = []
    cg = low_rank_cg(
        operator, kspace, iterations=30, regularisation=0.0, on_iteration=lambda _i, r: residuals.append(r)
    )
    assert len(residuals) == 30
    assert residuals[-1] < 0.05 * residuals[0]
    assert error(cg) < 0.05
    assert error(svdmrf(operator, kspace)) > 4 * error(cg)


def test_dictionary_admm_removes_the_bias_of_a_prior_centred_on_zero() -> None:
    """Pixels made of three atoms: a strong zero-centred prior shrinks them; ADMM's dictionary prior does not."""
    rng = np.random.default_rng(5)
    atoms = np.linalg.qr(rng.standard_normal((RANK, RANK)) + 1j * rng.standard_normal((RANK, RANK)))[0].T
    atoms = (atoms * [[1.0], [0.8], [0.6]]).astype(np.complex64)
    y, x = np.mgrid[-1 : 1 : MATRIX * 1j, -1 : 1 : MATRIX * 1j]
    labels = np.where(x**2 + y**2 < 0.7, 1 + (x > 0.1) + (y > 0.3), 0)
    pd = np.where(labels > 0, 1.0 + 0.3 * y, 0.0)
    truth = np.zeros((RANK, MATRIX, MATRIX), np.complex64)
    for label in (1, 2, 3):
        truth[:, labels == label] = atoms[label - 1][:, None] * pd[labels == label]
    basis, sens, readouts, truth = _scan("fixed", rng, truth)
    kspace = _accumulate(basis, readouts).result()
    operator = SubspaceOperator(SubspaceGridding(kspace, (MATRIX, MATRIX), device="cpu"), kspace, sens)
    inside = labels > 0

    def error(estimate: torch.Tensor) -> float:
        return float(np.linalg.norm((estimate.numpy() - truth)[:, inside]) / np.linalg.norm(truth[:, inside]))

    start = low_rank_cg(operator, kspace, iterations=30, regularisation=0.5)
    rounds: list[int] = []
    admm = dictionary_admm(
        operator,
        kspace,
        start,
        torch.from_numpy(atoms),
        rounds=10,
        regularisation=0.5,
        on_round=rounds.append,
    )
    assert rounds == list(range(1, 11))
    assert error(start) > 0.1
    assert error(admm) < 0.2 * error(start)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        dictionary_admm(operator, kspace, start, torch.from_numpy(atoms), rounds=0)


def test_sensitivities_from_the_data_match_the_coils() -> None:
    """ESPIRiT on the per-coil subspace reconstruction finds the simulated coils (up to one common phase).

    Measured median overlap 0.9998 (3 seeds, smallest pixel 0.997); ESPIRiT on the gridded first coefficient, as
    before, gave 0.88 (8 interleaves leave aliasing and each interleaf its own mix of coefficients); a transposed or
    mis-centred calibration gives about 0.5.
    """
    rng = np.random.default_rng(3)
    basis, sens, readouts, truth = _scan("fixed", rng)
    kspace = _accumulate(basis, readouts).result()
    estimated = subspace_sensitivities(SubspaceGridding(kspace, (MATRIX, MATRIX), device="cpu"), kspace)
    inside = np.abs(truth[0]) > 0
    overlap = np.abs(np.sum(estimated.conj() * sens, axis=0))[inside]
    assert np.median(overlap) > 0.995
    assert overlap.min() > 0.98


def test_accumulator_errors_name_the_problem() -> None:
    rng = np.random.default_rng(4)
    basis = _basis(rng)
    accumulator = SubspaceAccumulator(basis, n_coils=2, n_samples=10, image_shape=(16, 16))
    coord = rng.uniform(-8, 8, (10, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="outside the schedule's 40 acquired frames"):
        accumulator.add(40, coord, np.zeros((2, 10), np.complex64))
    with pytest.raises(ValueError, match=r"expected \(2, 10\)"):
        accumulator.add(0, coord, np.zeros((3, 10), np.complex64))
    accumulator.add(0, coord, np.ones((2, 10), np.complex64))
    moved = coord.copy()
    moved[0] += 1.0
    with pytest.raises(ValueError, match="share their trajectory's end points"):
        accumulator.add(1, moved, np.ones((2, 10), np.complex64))
    with pytest.raises(ValueError, match="no readouts"):
        SubspaceAccumulator(basis, n_coils=2, n_samples=10, image_shape=(16, 16)).result()
    with pytest.raises(ValueError, match="buffer_frames must be at least 1"):
        SubspaceAccumulator(basis, n_coils=2, n_samples=10, image_shape=(16, 16), buffer_frames=0)
