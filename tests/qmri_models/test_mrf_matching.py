"""Dictionary matching: exhaustive against numpy, score and PD, the clustered search against exhaustive, errors."""

import math
from typing import Literal

import numpy as np
import pytest
import torch

from qmri_models.mrf.matching import (
    MatchIndex,
    MatchResult,
    build_match_index,
    match_fingerprints,
    project_onto_dictionary,
    signal_mask,
)

RANK = 5
N_FRAMES = 200
TIE = 1e-6
"""Scores closer than this are a tie: two atoms float32 cannot tell apart, either of which counts as the match."""
Method = Literal["fast", "exhaustive"]
METHODS: tuple[Method, ...] = ("exhaustive", "fast")


def log_grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T1, T2) pairs of an n x n log-spaced grid (T1 100..4000 ms, T2 10..2000 ms), T2 < T1. Shapes `(atoms,)`."""
    t1, t2 = torch.meshgrid(
        torch.logspace(2.0, math.log10(4000.0), n, dtype=torch.float64),
        torch.logspace(1.0, math.log10(2000.0), n, dtype=torch.float64),
        indexing="ij",
    )
    keep = t2 < t1
    return t1[keep], t2[keep]


def ssfp_signals(t1_ms: torch.Tensor, t2_ms: torch.Tensor) -> torch.Tensor:
    """A stand-in fingerprint family: inversion, then on-resonance bSSFP with sine-lobe flip angles. `(n, frames)`."""
    frame = torch.arange(N_FRAMES, dtype=torch.float64)
    flip = torch.deg2rad(5.0 + 55.0 * torch.sin(torch.pi * frame / 100.0).abs())
    tr_ms = 10.5 + 3.0 * torch.sin(2.0 * torch.pi * frame / 70.0)
    mz, mxy = -torch.ones_like(t1_ms), torch.zeros_like(t1_ms)
    frames = []
    for a, tr in zip(flip.tolist(), tr_ms.tolist(), strict=True):
        mxy, mz = math.cos(a) * mxy + math.sin(a) * mz, math.cos(a) * mz - math.sin(a) * mxy
        frames.append(mxy * torch.exp(-tr / 2.0 / t2_ms))
        e1 = torch.exp(-tr / t1_ms)
        mxy, mz = -mxy * torch.exp(-tr / t2_ms), mz * e1 + 1.0 - e1
    return torch.stack(frames, dim=1).to(torch.complex64)


class StandIn:
    """A small dictionary of ``ssfp_signals``: unit atoms, their norms, an SVD basis and the compressed atoms."""

    def __init__(self, n_grid: int = 45) -> None:
        self.t1_ms, self.t2_ms = log_grid(n_grid)
        raw = ssfp_signals(self.t1_ms, self.t2_ms)
        self.norms = torch.linalg.vector_norm(raw, dim=1)
        _, _, vh = torch.linalg.svd(raw / self.norms[:, None], full_matrices=False)
        self.basis = vh[:RANK].mH.contiguous()
        self.atoms = self.compress(raw / self.norms[:, None])

    def compress(self, series: torch.Tensor) -> torch.Tensor:
        """Subspace coefficients ``V^H s`` of time series `(n, frames)`. Shape `(n, rank)`."""
        return series @ self.basis.conj()

    def pixels(self, n: int, snr: float, seed: int) -> torch.Tensor:
        """Off-grid tissues with random complex M0 and complex noise at subspace SNR ``snr`` (0: noise only)."""
        generator = torch.Generator().manual_seed(seed)
        t1 = torch.exp(
            torch.empty(n, dtype=torch.float64).uniform_(math.log(100.0), math.log(4000.0), generator=generator)
        )
        t2 = t1 * torch.empty(n, dtype=torch.float64).uniform_(0.01, 0.5, generator=generator)
        m0 = torch.polar(torch.rand(n, generator=generator) + 0.5, torch.rand(n, generator=generator) * 2 * math.pi)
        clean = self.compress(ssfp_signals(t1, t2) * m0[:, None])
        noise = torch.complex(*torch.randn(2, n, RANK, generator=generator)) / math.sqrt(2 * RANK)
        if snr == 0:
            return noise
        return clean + noise * (torch.linalg.vector_norm(clean, dim=1) / snr)[:, None]


@pytest.fixture(scope="module")
def stand_in() -> StandIn:
    return StandIn()


@pytest.fixture(scope="module")
def stand_in_index(stand_in: StandIn) -> MatchIndex:
    return build_match_index(stand_in.atoms)


def agreement(fast: MatchResult, exhaustive: MatchResult) -> torch.Tensor:
    """Pixels where the fast search found the exhaustive atom, or one whose score ties it."""
    return (fast.index == exhaustive.index) | ((fast.score - exhaustive.score).abs() <= TIE)


def test_exhaustive_equals_numpy_argmax() -> None:
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(300, 4)) + 1j * rng.normal(size=(300, 4))
    x = rng.normal(size=(64, 4)) + 1j * rng.normal(size=(64, 4))
    norms = rng.uniform(0.5, 2.0, 300)
    inner = atoms.conj() @ x.T
    atom_lengths = np.linalg.norm(atoms, axis=1)
    expected = np.argmax(np.abs(inner) / atom_lengths[:, None], axis=0)
    columns = np.arange(64)
    found = match_fingerprints(
        torch.from_numpy(x).to(torch.complex64),
        torch.from_numpy(atoms).to(torch.complex64),
        atom_norms=torch.from_numpy(norms),
        method="exhaustive",
    )
    np.testing.assert_array_equal(found.index.numpy(), expected)
    score = np.abs(inner[expected, columns]) / (atom_lengths[expected] * np.linalg.norm(x, axis=1))
    pd = inner[expected, columns] / atom_lengths[expected] ** 2 / norms[expected]
    np.testing.assert_allclose(found.score.numpy(), score, rtol=1e-5)
    np.testing.assert_allclose(found.pd.numpy(), pd, rtol=1e-5)
    assert found.index.dtype == torch.int64
    assert found.score.dtype == torch.float32
    assert found.pd.dtype == torch.complex64


@pytest.mark.parametrize("method", METHODS)
def test_noise_free_atoms_score_one_and_give_their_pd(
    stand_in: StandIn, stand_in_index: MatchIndex, method: Method
) -> None:
    # Every atom's own signal with M0 = 2 - 1.5i: scores 1, PD back from the norm and the subspace.
    m0 = complex(2.0, -1.5)
    x = stand_in.atoms * stand_in.norms[:, None] * m0
    found = match_fingerprints(
        x,
        stand_in.atoms,
        atom_norms=stand_in.norms,
        method=method,
        index=stand_in_index,
    )
    assert float(found.score.min()) >= 1.0 - 1e-5
    assert float(found.score.max()) <= 1.0
    assert float((found.index == torch.arange(x.shape[0])).float().mean()) > 0.99
    torch.testing.assert_close(found.pd, torch.full_like(found.pd, m0), rtol=2e-4, atol=0.0)


def test_scores_lie_in_unit_interval(stand_in: StandIn) -> None:
    found = match_fingerprints(stand_in.pixels(500, 1.0, seed=1), stand_in.atoms, method="exhaustive")
    assert bool(((found.score >= 0) & (found.score <= 1)).all())
    assert float(found.score.min()) < 0.99


@pytest.mark.parametrize("snr", [30.0, 10.0, 3.0, 0.0])
def test_fast_agrees_with_exhaustive(stand_in: StandIn, stand_in_index: MatchIndex, snr: float) -> None:
    x = stand_in.pixels(2000, snr, seed=int(snr) + 2)
    exhaustive = match_fingerprints(x, stand_in.atoms, atom_norms=stand_in.norms, method="exhaustive")
    fast = match_fingerprints(x, stand_in.atoms, atom_norms=stand_in.norms, index=stand_in_index)
    # The bound makes the clustered search exact: only atoms float32 cannot tell apart may differ.
    assert bool(agreement(fast, exhaustive).all())
    assert float((fast.index == exhaustive.index).float().mean()) >= 0.99
    same = fast.index == exhaustive.index
    assert torch.equal(fast.score[same], exhaustive.score[same])
    assert torch.equal(fast.pd[same], exhaustive.pd[same])


def test_fast_agrees_with_exhaustive_on_complex_atoms() -> None:
    # Atoms with phases of their own (not one real signal family): k-means must align phases, the bound hold.
    generator = torch.Generator().manual_seed(9)
    atoms = torch.complex(*torch.randn(2, 3000, 4, generator=generator))
    x = torch.complex(*torch.randn(2, 500, 4, generator=generator))
    exhaustive = match_fingerprints(x, atoms, method="exhaustive")
    fast = match_fingerprints(x, atoms, index=build_match_index(atoms, clusters=30))
    assert bool(agreement(fast, exhaustive).all())


def test_fast_stays_exact_with_one_probe_and_few_clusters(stand_in: StandIn) -> None:
    # Probing only the best of 8 clusters misses the best atom often on noise; the bound must catch every miss.
    index = build_match_index(stand_in.atoms, clusters=8)
    x = stand_in.pixels(1000, 0.0, seed=5)
    exhaustive = match_fingerprints(x, stand_in.atoms, method="exhaustive")
    fast = match_fingerprints(x, stand_in.atoms, index=index, probe=1)
    assert bool(agreement(fast, exhaustive).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_pixels", [1, 7, 4096])
def test_chunking_does_not_change_the_result(
    stand_in: StandIn, stand_in_index: MatchIndex, method: Method, chunk_pixels: int
) -> None:
    x = stand_in.pixels(300, 5.0, seed=3)
    whole, chunked = (
        match_fingerprints(
            x, stand_in.atoms, atom_norms=stand_in.norms, method=method, index=stand_in_index, chunk_pixels=chunk
        )
        for chunk in (None, chunk_pixels)
    )
    assert torch.equal(whole.index, chunked.index)
    assert torch.equal(whole.score, chunked.score)
    assert torch.equal(whole.pd, chunked.pd)


def test_zero_pixels_match_atom_zero_with_zero_score_and_pd(stand_in: StandIn, stand_in_index: MatchIndex) -> None:
    x = stand_in.pixels(20, 10.0, seed=4)
    x[[3, 11]] = 0
    for method in METHODS:
        found = match_fingerprints(x, stand_in.atoms, method=method, index=stand_in_index)
        assert found.index[[3, 11]].tolist() == [0, 0]
        assert found.score[[3, 11]].tolist() == [0.0, 0.0]
        assert found.pd[[3, 11]].abs().tolist() == [0.0, 0.0]
        assert bool((found.score[x.abs().sum(1) > 0] > 0).all())


def test_index_partitions_the_atoms_within_each_radius(stand_in: StandIn, stand_in_index: MatchIndex) -> None:
    index = stand_in_index
    assert index.n_atoms == stand_in.atoms.shape[0]
    assert index.n_clusters <= math.ceil(math.sqrt(index.n_atoms))
    assert torch.equal(torch.sort(index.order).values, torch.arange(index.n_atoms))
    assert int(index.offsets[0]) == 0
    assert int(index.offsets[-1]) == index.n_atoms
    assert bool((index.offsets.diff() > 0).all())
    cluster = torch.repeat_interleave(torch.arange(index.n_clusters), index.offsets.diff())
    members = index.unit_atoms[index.order]
    cosine = (index.centroids[cluster].conj() * members).sum(1).abs()
    assert bool((cosine >= index.cos_radius[cluster] - 1e-6).all())
    torch.testing.assert_close(index.cos_radius**2 + index.sin_radius**2, torch.ones(index.n_clusters))
    again = build_match_index(stand_in.atoms)
    assert torch.equal(again.order, index.order)


def test_fast_without_an_index_builds_one(stand_in: StandIn, stand_in_index: MatchIndex) -> None:
    x = stand_in.pixels(100, 10.0, seed=6)
    assert torch.equal(
        match_fingerprints(x, stand_in.atoms).index, match_fingerprints(x, stand_in.atoms, index=stand_in_index).index
    )


def test_device_argument_moves_the_inputs(stand_in: StandIn, stand_in_index: MatchIndex) -> None:
    x = stand_in.pixels(100, 10.0, seed=6)
    here = match_fingerprints(x, stand_in.atoms, index=stand_in_index)
    moved = match_fingerprints(x, stand_in.atoms, index=stand_in_index, device="cpu")
    assert torch.equal(here.index, moved.index)
    with pytest.raises(ValueError, match="x is on meta but atoms on cpu"):
        match_fingerprints(x.to("meta"), stand_in.atoms)


def test_rejects_inputs_that_do_not_fit(stand_in: StandIn, stand_in_index: MatchIndex) -> None:
    atoms, x = stand_in.atoms, stand_in.pixels(10, 10.0, seed=7)
    with pytest.raises(ValueError, match=r"one rank, got shapes \(10, 4\) and \(\d+, 5\)"):
        match_fingerprints(x[:, :4], atoms)
    with pytest.raises(ValueError, match=r"x must have shape \(pixels, rank\), got \(2, 5, 5\)"):
        match_fingerprints(x[:10].reshape(2, 5, 5), atoms)
    with pytest.raises(ValueError, match=r"x must have shape \(pixels, rank\), got \(5,\)"):
        match_fingerprints(x[0], atoms)
    with pytest.raises(ValueError, match=r"atoms must have shape \(atoms, rank\) with atoms > 0, got \(5,\)"):
        match_fingerprints(x, atoms[0])
    with pytest.raises(ValueError, match=r"atom_norms must have shape \(\d+,\), one per atom, got \(3,\)"):
        match_fingerprints(x, atoms, atom_norms=torch.ones(3))
    with pytest.raises(ValueError, match="atom_norms must be real, positive and finite"):
        match_fingerprints(x, atoms, atom_norms=torch.zeros(atoms.shape[0]))
    with pytest.raises(TypeError, match=r"must be complex, got torch\.float32"):
        match_fingerprints(x.real, atoms)
    with pytest.raises(ValueError, match="method must be 'fast' or 'exhaustive', got 'nearest'"):
        match_fingerprints(x, atoms, method="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe must be at least 1, got 0"):
        match_fingerprints(x, atoms, index=stand_in_index, probe=0)
    with pytest.raises(ValueError, match="chunk_pixels must be at least 1, got 0"):
        match_fingerprints(x, atoms, chunk_pixels=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        match_fingerprints(torch.full_like(x, math.nan), atoms)
    with pytest.raises(ValueError, match=r"index was built for atoms of shape \(\d+, 5\), got atoms \(50, 5\)"):
        match_fingerprints(x, atoms[:50], index=stand_in_index)
    with pytest.raises(ValueError, match="index was built for other atoms"):
        match_fingerprints(x, atoms.flip(0), index=stand_in_index)
    with pytest.raises(ValueError, match=r"clusters must be in \[1, 50\] \(the atom count\), got 51"):
        build_match_index(atoms[:50], clusters=51)


def test_projection_returns_each_pixels_best_atom_at_its_least_squares_scale(
    stand_in: StandIn, stand_in_index: MatchIndex
) -> None:
    """Against a direct computation: argmax of |d^H x| / ||d|| over every atom, then d (d^H x) / ||d||^2."""
    rng = np.random.default_rng(12)
    chosen = torch.from_numpy(rng.choice(stand_in.atoms.shape[0], 6 * 5, replace=False))
    scale = torch.from_numpy((rng.uniform(0.5, 2, 30) * np.exp(2j * np.pi * rng.uniform(size=30))).astype(np.complex64))
    pixels = stand_in.atoms[chosen] * scale[:, None]
    pixels = pixels + 0.02 * torch.randn(pixels.shape, dtype=torch.complex64)
    images = pixels.T.reshape(RANK, 6, 5)
    images[:, 0, 0] = 1e-4  # far below 5% of the bright level: background, projected to zero
    atoms = stand_in.atoms.numpy()
    expected = np.zeros((RANK, 6, 5), np.complex64)
    for p, x in enumerate(images.reshape(RANK, -1).T.numpy()):
        if p == 0:
            continue
        inner = atoms.conj() @ x
        best = int(np.argmax(np.abs(inner) / np.linalg.norm(atoms, axis=1)))
        expected.reshape(RANK, -1)[:, p] = atoms[best] * inner[best] / np.linalg.norm(atoms[best]) ** 2
    for index in (None, stand_in_index):
        projected = project_onto_dictionary(images, stand_in.atoms, index=index).numpy()
        np.testing.assert_allclose(projected, expected, atol=2e-5 * np.abs(expected).max())
    twice = project_onto_dictionary(torch.from_numpy(expected), stand_in.atoms, index=stand_in_index).numpy()
    np.testing.assert_allclose(twice, expected, atol=2e-5 * np.abs(expected).max())


def test_signal_mask_keeps_pixels_above_a_fraction_of_the_bright_level() -> None:
    norms = torch.linspace(0.0, 1.0, 101)
    images = torch.stack([norms * 0.6, norms * 0.8j]).reshape(2, 1, 101)
    mask = signal_mask(images, 0.1)
    bright = float(np.percentile(norms.numpy(), 99))
    np.testing.assert_array_equal(mask[0].numpy(), norms.numpy() > 0.1 * bright)
    with pytest.raises(ValueError, match="threshold must be at least 0"):
        signal_mask(images, -0.1)


@pytest.mark.cuda
def test_cuda_matches_cpu(stand_in: StandIn, stand_in_index: MatchIndex) -> None:
    x = stand_in.pixels(2000, 5.0, seed=8)
    cpu = match_fingerprints(x, stand_in.atoms, atom_norms=stand_in.norms, method="exhaustive")
    for method in METHODS:
        cuda = match_fingerprints(
            x,
            stand_in.atoms,
            atom_norms=stand_in.norms,
            method=method,
            index=stand_in_index,
            device="cuda",
        )
        assert cuda.index.device.type == "cuda"
        tie = (cuda.score.cpu() - cpu.score).abs() <= 1e-5
        assert bool(((cuda.index.cpu() == cpu.index) | tie).all())
