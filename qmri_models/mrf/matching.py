"""MRF dictionary matching in the SVD subspace: exhaustive, or a clustered search that a bound keeps exact.

A pixel's subspace coefficients ``x`` match the atom ``a`` that maximises ``|d_a^H x| / ||d_a||``, ``d_a`` being the
compressed atom (the subspace coefficients of the unit-norm fingerprint; ``||d_a|| <= 1``, short of 1 by what the
rank leaves out). The score ``|d_a^H x| / (||d_a|| ||x||)`` is in [0, 1]. The proton density is the complex scale
``d_a^H x / ||d_a||^2`` divided by ``n_a``, the norm of the atom's fingerprint before normalisation, so it is in the
units of the M0 the dictionary was simulated with.

Both searches score unit atoms ``u_a = d_a / ||d_a||`` against unit pixels in real arithmetic, one GEMM of the
pixels ``[Re x, Im x]`` against the columns ``[Re u^H x | Im u^H x]``, and compare squared scores (no square root).

The exhaustive search scores every atom for chunks of pixels. The clustered search (``MatchIndex``, after
spherical k-means in the complex projective space, where the similarity ``|c^H u|`` ignores a global phase as the
match does) scores every cluster's centroid, searches the ``probe`` best clusters, giving the best score ``b`` so
far, then searches every other cluster that could still hold a better atom. The angle ``arccos |c^H u|`` between
unit vectors is the Fubini-Study distance, a metric, so an atom of a cluster whose members lie within ``theta_c`` of
its centroid scores at most ``cos(arccos |c^H x| - theta_c)`` against the pixel; clusters whose bound is below
``b`` cannot win. The result is the exhaustive one (float32 rounding aside, which decides only between atoms whose
scores tie to ~1e-6), whatever the data's SNR: ``probe`` and the cluster count only set the speed.

Memory, besides the inputs and the results: the unit atoms' real columns (``16 rank`` bytes per atom), one score
block of at most ``CPU_CHUNK_BYTES`` (``CUDA_CHUNK_BYTES`` on CUDA), the products of a chunk of pixels with every
atom (exhaustive) or every centroid (clustered), and for the clustered search the bookkeeping of at most about
``_PAIR_BUDGET`` (pixel, cluster) pairs at about 100 bytes each (50 MiB).

``bench/bench_mrf_matching.py`` measures both searches against each other.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch

from qmri_models.device import torch_device
from qmri_models.interrupt import check_interrupt

CPU_CHUNK_BYTES = 8 * 2**20
"""Memory of a chunk's score block on the CPU, sized to the caches. Exhaustive search of 8192 pixels against 95k
atoms (bench machine, idle), 1 thread: 1.4 s at 4 MiB, 1.35 s at 8 MiB, 1.5 s at 16 MiB, 5.2 s at 64 MiB; 2 threads:
1.0-1.25 s, 0.82-0.85 s, 0.76-0.80 s, 3.2 s. Tiling the atoms too did not help (1.8 s or more, 1 thread). The
clustered search took the same time from 4 to 16 MiB."""

CUDA_CHUNK_BYTES = 256 * 2**20
"""Memory of a chunk's score block on CUDA: large, so that kernel launches do not dominate."""

PROBE = 2
"""Clusters searched for every pixel before the bound decides which others to search. With ``sqrt(atoms)``
clusters, 1, 2 and 4 took within 20 % of each other (65536 pixels, SNR 5 and 30, 17.5k and 95k atoms, one core)."""

MASK_THRESHOLD = 0.05
"""Default of ``signal_mask``: pixels below 5% of the bright-pixel level are background."""

KMEANS_ITERATIONS = 10
"""Lloyd iterations of ``build_match_index``."""

_PAIR_BUDGET = 2**19
"""Most (pixel, cluster) pairs the clustered search holds at once, give or take one chunk's."""

_BOUND_MARGIN = 1e-4
"""Slack on the bound, in cosine: covers the float32 rounding of the scores it is compared with."""


@dataclass(frozen=True)
class MatchResult:
    """The matched atom of every pixel, its score and the proton density."""

    index: torch.Tensor
    """Matched atom (row of the dictionary). Shape `(pixels,)` int64."""
    score: torch.Tensor
    """Normalised inner product ``|d^H x| / (||d|| ||x||)``, in [0, 1]. Shape `(pixels,)` float32."""
    pd: torch.Tensor
    """Proton density, complex, in the units of the dictionary's M0. Shape `(pixels,)` complex64."""


@dataclass(frozen=True)
class MatchIndex:
    """Clusters of a compressed dictionary's atoms for ``match_fingerprints``' clustered search."""

    unit_atoms: torch.Tensor
    """The atoms it was built for, scaled to unit norm (checked on every search). Shape `(atoms, rank)` complex64."""
    centroids: torch.Tensor
    """Unit centroid of every cluster. Shape `(clusters, rank)` complex64."""
    cos_radius: torch.Tensor
    """Cosine of every cluster's radius: the smallest ``|c^H u|`` over its unit atoms. Shape `(clusters,)` float32."""
    sin_radius: torch.Tensor
    """Sine of every cluster's radius. Shape `(clusters,)` float32."""
    order: torch.Tensor
    """Atoms grouped by cluster: cluster ``c`` holds ``order[offsets[c]:offsets[c + 1]]``. Shape `(atoms,)` int64."""
    offsets: torch.Tensor
    """Start of every cluster in ``order``, then the atom count. Shape `(clusters + 1,)` int64."""

    @property
    def n_atoms(self) -> int:
        """Number of atoms indexed."""
        return int(self.order.shape[0])

    @property
    def n_clusters(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    def to(self, device: torch.device | str) -> "MatchIndex":
        """Return the index with its tensors on ``device``."""
        return MatchIndex(
            self.unit_atoms.to(device),
            self.centroids.to(device),
            self.cos_radius.to(device),
            self.sin_radius.to(device),
            self.order.to(device),
            self.offsets.to(device),
        )


def build_match_index(
    atoms: torch.Tensor, *, clusters: int | None = None, iterations: int = KMEANS_ITERATIONS, seed: int = 0
) -> MatchIndex:
    """Return the clusters of ``atoms`` (spherical k-means in the complex projective space) for the clustered search.

    Built once per dictionary, on the atoms' device. The centroids start at distinct atoms drawn with ``seed``;
    clusters left empty are dropped, so the index may hold fewer than ``clusters``.

    Parameters
    ----------
    atoms : Compressed dictionary, the subspace coefficients of every unit-norm fingerprint. Shape `(atoms, rank)`
        complex.
    clusters : Number of clusters, in [1, atoms]; None for ``ceil(sqrt(atoms))``, which balances scoring the
        centroids against searching the clusters: within 10 % of the fastest search among 0.3 to 3 times as many
        clusters (17.5k and 95k atoms, 65536 pixels at SNR 5 and 30, one core).
    iterations : Lloyd iterations, at least 0.
    seed : Seed of the starting centroids.

    Returns
    -------
    The index.
    """
    unit = _unit_atoms(atoms)
    n_atoms = unit.shape[0]
    n_clusters = math.ceil(math.sqrt(n_atoms)) if clusters is None else clusters
    if not 1 <= n_clusters <= n_atoms:
        raise ValueError(f"clusters must be in [1, {n_atoms}] (the atom count), got {n_clusters}")
    if iterations < 0:
        raise ValueError(f"iterations must be at least 0, got {iterations}")
    chunk_bytes = _chunk_bytes(unit.device)
    generator = torch.Generator().manual_seed(seed)
    centroids = unit[torch.randperm(n_atoms, generator=generator)[:n_clusters].to(unit.device)]
    unit_rows = _real_rows(unit)
    for _ in range(iterations):
        assignment, inner = _assign(unit, unit_rows, centroids, chunk_bytes)
        phase = inner.conj() / inner.abs().clamp(min=torch.finfo(torch.float32).tiny)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, unit * phase[:, None])
        lengths = torch.linalg.vector_norm(sums, dim=1)
        kept = lengths > 0
        centroids = sums[kept] / lengths[kept, None]
    assignment, _ = _assign(unit, unit_rows, centroids, chunk_bytes)
    used, assignment = torch.unique(assignment, return_inverse=True)
    centroids = centroids[used]
    cosine = (centroids[assignment].to(torch.complex128).conj() * unit.to(torch.complex128)).sum(1).abs()
    cos_radius = torch.ones(used.numel(), dtype=torch.float64, device=unit.device)
    cos_radius = cos_radius.scatter_reduce(0, assignment, cosine.clamp(max=1.0), "amin")
    sizes = torch.bincount(assignment, minlength=used.numel())
    return MatchIndex(
        unit_atoms=unit,
        centroids=centroids,
        cos_radius=cos_radius.to(torch.float32),
        sin_radius=torch.sqrt(1.0 - cos_radius**2).to(torch.float32),
        order=torch.argsort(assignment, stable=True),
        offsets=torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]),
    )


def match_fingerprints(
    x: torch.Tensor,
    atoms: torch.Tensor,
    *,
    atom_norms: torch.Tensor | None = None,
    method: Literal["fast", "exhaustive"] = "fast",
    index: MatchIndex | None = None,
    probe: int = PROBE,
    chunk_pixels: int | None = None,
    device: torch.device | str | None = None,
) -> MatchResult:
    """Return the best-matching atom of every pixel, its score and the proton density.

    Computes in float32 on ``device``. A pixel whose data are all zero matches atom 0 with score and PD 0.

    Parameters
    ----------
    x : Subspace coefficients of every pixel, ``V^H s``. Shape `(pixels, rank)` complex.
    atoms : Compressed dictionary, the subspace coefficients of every unit-norm fingerprint. Shape `(atoms, rank)`
        complex.
    atom_norms : Norm of every atom's fingerprint before normalisation, the PD scale. Shape `(atoms,)` real;
        None for 1.
    method : ``fast`` (the clustered search, exact by its bound) or ``exhaustive`` (every atom, the reference).
    index : ``build_match_index(atoms)``, for ``fast``; None builds it on every call (seconds for 95k atoms).
    probe : Clusters searched for every pixel before the bound (``fast``), at least 1.
    chunk_pixels : Pixels scored together; None for as many as keep a chunk's scores within ``CPU_CHUNK_BYTES``
        (``CUDA_CHUNK_BYTES`` on CUDA).
    device : Where to match (``auto``, ``cpu``, ``cuda``, a device); the inputs are moved there. None for the device
        of ``x``, where the other inputs must already be.

    Returns
    -------
    Atom, score and PD of every pixel, on the device matched on.
    """
    if device is not None:
        target = device if isinstance(device, torch.device) else torch_device(device)
        x, atoms = x.to(target), atoms.to(target)
        atom_norms = None if atom_norms is None else atom_norms.to(target)
        index = None if index is None else index.to(target)
    _check_inputs(x, atoms, atom_norms)
    if method not in ("fast", "exhaustive"):
        raise ValueError(f"method must be 'fast' or 'exhaustive', got {method!r}")
    if probe < 1:
        raise ValueError(f"probe must be at least 1, got {probe}")
    if chunk_pixels is not None and chunk_pixels < 1:
        raise ValueError(f"chunk_pixels must be at least 1, got {chunk_pixels}")
    data = x.to(torch.complex64)
    unit = _unit_atoms(atoms)
    lengths = torch.linalg.vector_norm(data, dim=1)
    signal = torch.nonzero(lengths > 0).squeeze(1)
    pixels = _real_rows(data[signal] / lengths[signal, None])
    chunk_bytes = _chunk_bytes(data.device)
    if method == "exhaustive":
        columns = _real_columns(unit)
        chunk = chunk_pixels or max(1, chunk_bytes // (4 * columns.shape[1]))
        found = _exhaustive(pixels, columns, chunk)
    else:
        search = build_match_index(atoms) if index is None else index
        _check_index(search, unit)
        found = _Clustered.of(unit, search, chunk_pixels, chunk_bytes).search(pixels, min(probe, search.n_clusters))
    best = torch.zeros(data.shape[0], dtype=torch.int64, device=data.device)
    best[signal] = found
    return _result(data, lengths, atoms.to(torch.complex64), atom_norms, best)


def _check_inputs(x: torch.Tensor, atoms: torch.Tensor, atom_norms: torch.Tensor | None) -> None:
    """Raise ValueError or TypeError unless the pixels, atoms and atom norms fit together."""
    if x.ndim != 2:
        raise ValueError(f"x must have shape (pixels, rank), got {tuple(x.shape)}")
    if atoms.ndim != 2 or atoms.shape[0] == 0:
        raise ValueError(f"atoms must have shape (atoms, rank) with atoms > 0, got {tuple(atoms.shape)}")
    if atoms.shape[1] != x.shape[1]:
        raise ValueError(f"x and atoms must have one rank, got shapes {tuple(x.shape)} and {tuple(atoms.shape)}")
    if not (x.is_complex() and atoms.is_complex()):
        raise TypeError(f"x and atoms must be complex, got {x.dtype} and {atoms.dtype}")
    if atoms.device != x.device:
        raise ValueError(f"x is on {x.device} but atoms on {atoms.device}; move them to one device")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values")
    if atom_norms is None:
        return
    if atom_norms.shape != atoms.shape[:1]:
        raise ValueError(f"atom_norms must have shape ({atoms.shape[0]},), one per atom, got {tuple(atom_norms.shape)}")
    if atom_norms.device != x.device:
        raise ValueError(f"x is on {x.device} but atom_norms on {atom_norms.device}; move them to one device")
    if atom_norms.is_complex() or not bool(((atom_norms > 0) & torch.isfinite(atom_norms)).all()):
        raise ValueError("atom_norms must be real, positive and finite")


def _check_index(index: MatchIndex, unit: torch.Tensor) -> None:
    """Raise ValueError unless ``index`` was built for the atoms whose unit rows are ``unit``, on their device."""
    if index.unit_atoms.shape != unit.shape:
        raise ValueError(
            f"index was built for atoms of shape {tuple(index.unit_atoms.shape)}, got atoms {tuple(unit.shape)}"
        )
    if index.unit_atoms.device != unit.device:
        raise ValueError(f"index is on {index.unit_atoms.device} but atoms on {unit.device}; use index.to()")
    if not torch.allclose(index.unit_atoms, unit, rtol=0.0, atol=1e-5):
        raise ValueError("index was built for other atoms (same shape, other values); build it for these")


def _chunk_bytes(device: torch.device) -> int:
    """Return the memory budget of a chunk's score block on ``device``."""
    return CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES


def _unit_atoms(atoms: torch.Tensor) -> torch.Tensor:
    """Return the atoms scaled to unit norm, complex64. Shape `(atoms, rank)`."""
    if atoms.ndim != 2 or atoms.shape[0] == 0:
        raise ValueError(f"atoms must have shape (atoms, rank) with atoms > 0, got {tuple(atoms.shape)}")
    if not atoms.is_complex():
        raise TypeError(f"atoms must be complex, got {atoms.dtype}")
    unit = atoms.to(torch.complex64)
    lengths = torch.linalg.vector_norm(unit, dim=1)
    if not bool(((lengths > 0) & torch.isfinite(lengths)).all()):
        raise ValueError("every atom must have a finite, non-zero norm in the subspace")
    return unit / lengths[:, None]


def _real_rows(vectors: torch.Tensor) -> torch.Tensor:
    """Return complex row vectors as real rows ``[Re v, Im v]``. Shape `(n, 2 rank)` float32."""
    return torch.cat([vectors.real, vectors.imag], dim=1).contiguous()


def _real_columns(vectors: torch.Tensor) -> torch.Tensor:
    """Return the columns that give ``[Re v^H x | Im v^H x]`` from ``_real_rows(x)``. Shape `(2 rank, 2 n)`."""
    real, imag = vectors.real.T, vectors.imag.T
    return torch.cat([torch.cat([real, -imag], dim=1), torch.cat([imag, real], dim=1)], dim=0).contiguous()


def _squared_scores(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Return ``|v^H x|^2`` of real rows against ``_real_columns(v)``. Shape `(rows, columns / 2)`, a strided view."""
    products = rows @ columns
    n = columns.shape[1] // 2
    return products[:, :n].square_().add_(products[:, n:].square_())


def _exhaustive(pixels: torch.Tensor, columns: torch.Tensor, chunk: int) -> torch.Tensor:
    """Return the best atom of every unit pixel against every atom. Shape `(pixels,)` int64.

    Parameters
    ----------
    pixels : Unit pixels as real rows. Shape `(pixels, 2 rank)`.
    columns : ``_real_columns`` of the unit atoms. Shape `(2 rank, 2 atoms)`.
    chunk : Pixels scored together; the peak memory is their products, ``8 * chunk * atoms`` bytes.
    """
    found = torch.empty(pixels.shape[0], dtype=torch.int64, device=pixels.device)
    for start in range(0, pixels.shape[0], chunk):
        check_interrupt()
        found[start : start + chunk] = _squared_scores(pixels[start : start + chunk], columns).argmax(1)
    return found


def _assign(
    unit: torch.Tensor, unit_rows: torch.Tensor, centroids: torch.Tensor, chunk_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every atom's nearest centroid and the inner product ``c^H u`` with it. Shapes `(atoms,)`."""
    columns = _real_columns(centroids)
    chunk = max(1, chunk_bytes // (4 * columns.shape[1]))
    assignment = torch.cat(
        [_squared_scores(unit_rows[s : s + chunk], columns).argmax(1) for s in range(0, unit.shape[0], chunk)]
    )
    return assignment, (centroids[assignment].conj() * unit).sum(1)


@dataclass(frozen=True)
class _Clustered:
    """The clustered search over one index, with the arrays it needs made once per call."""

    index: MatchIndex
    centroid_columns: torch.Tensor
    """``_real_columns`` of the centroids. Shape `(2 rank, 2 clusters)`."""
    member_columns: torch.Tensor
    """``_real_columns`` of the unit atoms in ``index.order``, each cluster's real-part columns then its
    imaginary-part ones: cluster ``c`` occupies columns ``2 offsets[c]`` to ``2 offsets[c + 1]``.
    Shape `(2 rank, 2 atoms)`."""
    offsets: list[int]
    """``index.offsets``."""
    chunk: int
    """Pixels whose centroid scores are computed together."""
    chunk_bytes: int
    """Memory budget of a score block."""

    @classmethod
    def of(cls, unit: torch.Tensor, index: MatchIndex, chunk_pixels: int | None, chunk_bytes: int) -> "_Clustered":
        """Return the search over ``index`` of the unit atoms ``unit`` `(atoms, rank)`."""
        columns = _real_columns(unit[index.order])
        n_atoms = unit.shape[0]
        sizes = index.offsets.diff()
        real_column = torch.repeat_interleave(index.offsets[:-1], sizes) + torch.arange(n_atoms, device=unit.device)
        grouped = torch.empty_like(columns)
        grouped[:, real_column] = columns[:, :n_atoms]
        grouped[:, real_column + torch.repeat_interleave(sizes, sizes)] = columns[:, n_atoms:]
        chunk = chunk_pixels or max(1, chunk_bytes // (16 * index.n_clusters))
        return cls(index, _real_columns(index.centroids), grouped, index.offsets.tolist(), chunk, chunk_bytes)

    def search(self, pixels: torch.Tensor, probe: int) -> torch.Tensor:
        """Return the best atom of every unit pixel (real rows `(pixels, 2 rank)`). Shape `(pixels,)` int64.

        Pixels go in blocks of ``_PAIR_BUDGET / probe``, so that their probe pairs fit in the budget.
        """
        block = max(1, _PAIR_BUDGET // probe)
        found = []
        for start in range(0, pixels.shape[0], block):
            check_interrupt()
            found.append(self._search_block(pixels[start : start + block], probe))
        return torch.cat(found) if found else torch.empty(0, dtype=torch.int64, device=pixels.device)

    def _search_block(self, pixels: torch.Tensor, probe: int) -> torch.Tensor:
        """Return the best atom of every pixel of a block: probe, then the clusters the bound leaves in."""
        n_pixels = pixels.shape[0]
        top = torch.cat(
            [
                _squared_scores(pixels[s : s + self.chunk], self.centroid_columns).topk(probe, dim=1).indices
                for s in range(0, n_pixels, self.chunk)
            ]
        )
        pair_pixels = torch.arange(n_pixels, device=pixels.device).repeat_interleave(probe)
        scores, positions = self._search_pairs(pixels, pair_pixels, top.reshape(-1))
        best_score, pick = scores.view(n_pixels, probe).max(1)
        best_position = positions.view(n_pixels, probe).gather(1, pick[:, None]).squeeze(1)
        pending_pixels: list[torch.Tensor] = []
        pending_clusters: list[torch.Tensor] = []
        for start in range(0, n_pixels, self.chunk):
            stop = min(start + self.chunk, n_pixels)
            candidates = self._beyond_bound(pixels[start:stop], best_score[start:stop])
            candidates.scatter_(1, top[start:stop], False)
            rows, clusters = torch.nonzero(candidates, as_tuple=True)
            pending_pixels.append(rows + start)
            pending_clusters.append(clusters)
            if sum(p.numel() for p in pending_pixels) >= _PAIR_BUDGET or stop == n_pixels:
                pair_pixels, pair_clusters = torch.cat(pending_pixels), torch.cat(pending_clusters)
                pending_pixels, pending_clusters = [], []
                if pair_pixels.numel():
                    scores, positions = self._search_pairs(pixels, pair_pixels, pair_clusters)
                    _keep_better(best_score, best_position, pair_pixels, scores, positions)
        return self.index.order[best_position]

    def _beyond_bound(self, pixels: torch.Tensor, best_score: torch.Tensor) -> torch.Tensor:
        """Return the clusters that may hold an atom scoring above ``best_score``. Shape `(pixels, clusters)` bool.

        A cluster may when ``|c^H x| > cos(arccos b + theta_c) = b cos theta_c - sqrt(1 - b^2) sin theta_c``, ``b``
        the best score so far.

        Parameters
        ----------
        pixels : Unit pixels as real rows. Shape `(pixels, 2 rank)`.
        best_score : Squared best score of every pixel so far. Shape `(pixels,)`.
        """
        centroid_scores = _squared_scores(pixels, self.centroid_columns).sqrt_()
        best = best_score.clamp(0.0, 1.0)
        threshold = torch.outer(best.sqrt(), self.index.cos_radius)
        threshold.addr_(torch.sqrt(1.0 - best), self.index.sin_radius, alpha=-1.0).sub_(_BOUND_MARGIN)
        return centroid_scores > threshold

    def _search_pairs(
        self, pixels: torch.Tensor, pair_pixels: torch.Tensor, pair_clusters: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return, for every (pixel, cluster) pair, the best squared score in the cluster and that atom's position.

        Pairs are sorted by cluster, so that each cluster's atoms meet all its pixels in one product (in row blocks
        within the chunk budget).

        Parameters
        ----------
        pixels : Unit pixels as real rows. Shape `(pixels, 2 rank)`.
        pair_pixels : Pixel of every pair. Shape `(pairs,)`.
        pair_clusters : Cluster of every pair. Shape `(pairs,)`.

        Returns
        -------
        ``(scores, positions)``: the best squared score, float32, and the position in ``index.order`` of its atom,
        int64. Shapes `(pairs,)`.
        """
        order = torch.argsort(pair_clusters, stable=True)
        rows = pixels[pair_pixels[order]]
        counts = torch.bincount(pair_clusters, minlength=self.index.n_clusters)
        scores = torch.empty(order.numel(), dtype=torch.float32, device=pixels.device)
        positions = torch.empty(order.numel(), dtype=torch.int64, device=pixels.device)
        first = 0
        for cluster, count in enumerate(counts.tolist()):
            begin, end = self.offsets[cluster], self.offsets[cluster + 1]
            block = self.member_columns[:, 2 * begin : 2 * end]
            step = max(1, self.chunk_bytes // (4 * block.shape[1]))
            for row in range(first, first + count, step):
                stop = min(row + step, first + count)
                torch.max(_squared_scores(rows[row:stop], block), 1, out=(scores[row:stop], positions[row:stop]))
            first += count
        positions += torch.repeat_interleave(self.index.offsets[:-1], counts)
        unsorted_scores, unsorted_positions = torch.empty_like(scores), torch.empty_like(positions)
        unsorted_scores[order] = scores
        unsorted_positions[order] = positions
        return unsorted_scores, unsorted_positions


def _keep_better(
    best_score: torch.Tensor,
    best_position: torch.Tensor,
    pair_pixels: torch.Tensor,
    scores: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Raise every pixel's best squared score and atom position, in place, to the pairs' results that beat them."""
    improved = best_score.scatter_reduce(0, pair_pixels, scores, "amax")
    winner = (scores > best_score[pair_pixels]) & (scores == improved[pair_pixels])
    best_position[pair_pixels[winner]] = positions[winner]
    best_score.copy_(improved)


def _result(
    data: torch.Tensor,
    lengths: torch.Tensor,
    atoms: torch.Tensor,
    atom_norms: torch.Tensor | None,
    best: torch.Tensor,
) -> MatchResult:
    """Return the score and PD of every pixel's matched atom, computed alike whichever search found it."""
    matched = atoms[best]
    inner = (matched.conj() * data).sum(1)
    energy = matched.abs().square().sum(1)
    score = inner.abs() / (energy.sqrt() * lengths).clamp(min=torch.finfo(torch.float32).tiny)
    pd = inner / energy
    if atom_norms is not None:
        pd = pd / atom_norms.to(torch.float32)[best]
    return MatchResult(best, score.clamp(0.0, 1.0).to(torch.float32), pd.to(torch.complex64))


def signal_mask(coefficients: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return the pixels worth matching: subspace signal norm above ``threshold`` times its 99th percentile.

    Parameters
    ----------
    coefficients : Coefficient images. Shape `(K, y, x)` complex.
    threshold : Fraction of the bright-pixel level (the 99th percentile of the norm), at least 0.

    Returns
    -------
    Mask. Shape `(y, x)` bool, on the coefficients' device.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be at least 0, got {threshold}")
    norm = torch.linalg.vector_norm(coefficients, dim=0)
    return norm > threshold * torch.quantile(norm.flatten().to(torch.float32), 0.99)


def project_onto_dictionary(
    coefficients: torch.Tensor,
    atoms: torch.Tensor,
    *,
    index: MatchIndex | None = None,
    mask_threshold: float = MASK_THRESHOLD,
) -> torch.Tensor:
    """Return every pixel's matched atom scaled to the pixel: ``d_a (d_a^H x) / ||d_a||^2``, 0 outside the mask.

    Parameters
    ----------
    coefficients : Coefficient images. Shape `(K, y, x)` complex.
    atoms : Compressed dictionary (as ``match_fingerprints`` takes it), on the coefficients' device. Shape
        `(atoms, K)`.
    index : ``build_match_index(atoms)``; None for the exhaustive search.
    mask_threshold : Pixels below this fraction of the bright-pixel level project to 0 (``signal_mask``).

    Returns
    -------
    Projected coefficient images. Shape `(K, y, x)` complex64.
    """
    rank = coefficients.shape[0]
    mask = signal_mask(coefficients, mask_threshold)
    pixels = coefficients[:, mask].T.to(torch.complex64)
    found = match_fingerprints(pixels, atoms, method="exhaustive" if index is None else "fast", index=index)
    projected = torch.zeros((rank, *mask.shape), dtype=torch.complex64, device=coefficients.device)
    projected[:, mask] = (atoms.to(torch.complex64)[found.index] * found.pd[:, None]).T
    return projected
