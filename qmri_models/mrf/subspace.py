"""The low-rank temporal subspace of an MRF dictionary (McGivney et al. 2014): its SVD basis and the projections.

Convention, for a basis ``V`` of shape `(frames, rank)` with orthonormal columns (``V^H V = I``) and a time series
``s`` of shape `(frames,)`:

- subspace coefficients ``c = V^H s``, shape `(rank,)`; for series stored frames last, `(..., frames)`, that is
  ``series @ V.conj()`` (``to_subspace``), e.g. the compressed dictionary ``fingerprints @ V.conj()``;
- back-projection ``s ~ V c``; frames last, ``coefficients @ V.T`` (``from_subspace``).

``from_subspace(to_subspace(s))`` is the orthogonal projection of ``s`` onto the span of ``V``.
"""

import torch

DEFAULT_RANK = 5
"""Rank K of the temporal basis: 5 keeps 0.9995 of the default FISP dictionary's energy (200 frames)."""


def svd_basis(fingerprints: torch.Tensor, rank: int = DEFAULT_RANK) -> tuple[torch.Tensor, float]:
    """Return the rank-``rank`` temporal SVD basis of a dictionary and the fraction of its energy it keeps.

    The basis is the leading right singular vectors of the dictionary, found as the leading eigenvectors of its
    Gram matrix ``D^H D`` `(frames, frames)` (real arithmetic when the fingerprints are real-valued). Each vector's
    largest entry is made real and positive, so the basis does not depend on the solver's sign choice. The energy
    kept is the sum of the ``rank`` leading eigenvalues over the dictionary's total energy; for unit-norm
    fingerprints it is the mean over atoms of ``||V^H d||^2``, the fraction of each atom kept by the projection.

    Parameters
    ----------
    fingerprints : Dictionary atoms, one per row. Shape `(atoms, frames)`.
    rank : Number of basis vectors, in [1, frames].

    Returns
    -------
    ``(basis, energy_kept)``: the basis, orthonormal columns, complex with the fingerprints' precision, shape
    `(frames, rank)`; the fraction of the energy kept, in [0, 1].
    """
    if fingerprints.ndim != 2 or fingerprints.shape[0] == 0:
        raise ValueError(
            f"fingerprints must have shape (atoms, frames) with atoms > 0, got {tuple(fingerprints.shape)}"
        )
    n_frames = fingerprints.shape[1]
    if not 1 <= rank <= n_frames:
        raise ValueError(f"rank must be in [1, {n_frames}], got {rank}")
    data = fingerprints
    if data.is_complex() and not bool(data.imag.any()):
        data = data.real
    gram = data.mH @ data
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    leading = eigenvectors[:, -rank:].flip(-1)
    total = float(eigenvalues.clamp(min=0.0).sum())
    energy_kept = min(float(eigenvalues[-rank:].clamp(min=0.0).sum()) / total, 1.0) if total > 0 else 0.0
    pivot = leading.gather(0, leading.abs().argmax(0, keepdim=True))
    leading = leading * (pivot.conj() / pivot.abs())
    complex_dtype = torch.complex128 if fingerprints.dtype in (torch.float64, torch.complex128) else torch.complex64
    return leading.to(complex_dtype), energy_kept


def to_subspace(series: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Return the subspace coefficients ``V^H s`` of time series stored frames last.

    Parameters
    ----------
    series : Time series (fingerprints, image time series with frames last). Shape `(..., frames)`.
    basis : Orthonormal temporal basis ``V``. Shape `(frames, rank)`.

    Returns
    -------
    Coefficients. Shape `(..., rank)`.
    """
    return series.to(basis.dtype) @ basis.conj()


def from_subspace(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Return the time series ``V c`` of subspace coefficients, frames last.

    Parameters
    ----------
    coefficients : Subspace coefficients. Shape `(..., rank)`.
    basis : Orthonormal temporal basis ``V``. Shape `(frames, rank)`.

    Returns
    -------
    Time series in the span of the basis. Shape `(..., frames)`.
    """
    return coefficients.to(basis.dtype) @ basis.T
