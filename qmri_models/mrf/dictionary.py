"""The FISP-MRF dictionary: a log-spaced (T1, T2) grid simulated by EPG, unit-norm atoms, their SVD basis, on disk.

``build_dictionary`` simulates every atom at once (CUDA when present), normalises the atoms, computes the rank-K
temporal basis (``subspace``), and caches the result in a ``.npz`` file named by a digest of everything the
dictionary depends on: the schedule, the grid, the EPG orders, the rank and ``DICTIONARY_VERSION``. A second build
loads the file; a file that cannot be read or does not match its name is rebuilt. Loading never unpickles.

The PD scale: atoms are stored with unit L2 norm beside ``norms``, the norm of the M0 = 1 signal. A measured series
``s = PD exp(i phi) * raw`` of the matched atom gives ``unit^H s = PD exp(i phi) norm``, so
``PD = |unit^H s| / norm``.
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from qmri_models.device import torch_device
from qmri_models.mrf.epg import N_STATES, fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule
from qmri_models.mrf.subspace import DEFAULT_RANK, svd_basis, to_subspace

logger = logging.getLogger(__name__)

DICTIONARY_VERSION = 1
CACHE_MAX_FILES = 16
"""Dictionaries the disk cache keeps; the least recently used go first (each new schedule in a header would
otherwise add a file of 14-70 MB for good)."""
"""Version of the simulation and the file layout; part of every cache key, so changing either rebuilds."""

DEFAULT_STEP_PERCENT = 3.0
"""Relative step of the default grid in T1 and T2, percent: 17,553 atoms."""

PAPER_STEP_PERCENT = 1.27
"""Relative step of a grid the size of the MRF-IDDPM paper's 95K-atom dictionary, percent: 95,333 atoms."""

T1_RANGE_MS = (100.0, 4000.0)
"""T1 range of the grid, ms."""

T2_RANGE_MS = (10.0, 2000.0)
"""T2 range of the grid, ms."""


def t1_t2_grid(
    step_percent: float = DEFAULT_STEP_PERCENT,
    *,
    t1_range_ms: tuple[float, float] = T1_RANGE_MS,
    t2_range_ms: tuple[float, float] = T2_RANGE_MS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (T1, T2) pairs of a log-spaced grid with T2 < T1, T1-major.

    Each axis is log-spaced from its lower to its upper bound (both included) with the fewest points whose ratio
    of neighbours is at most ``1 + step_percent / 100``; pairs with T2 >= T1 are left out.

    Parameters
    ----------
    step_percent : Largest relative step between neighbouring values, percent.
    t1_range_ms : Lowest and highest T1, ms.
    t2_range_ms : Lowest and highest T2, ms.

    Returns
    -------
    ``(t1_ms, t2_ms)``, float64. Shapes `(atoms,)`.
    """
    if not 0.0 < step_percent < math.inf:
        raise ValueError(f"step_percent must be positive, got {step_percent}")
    axes = []
    for name, (low, high) in (("t1_range_ms", t1_range_ms), ("t2_range_ms", t2_range_ms)):
        if not 0.0 < low < high < math.inf:
            raise ValueError(f"{name} must be (low, high) with 0 < low < high, got {(low, high)}")
        n_points = math.ceil(math.log(high / low) / math.log1p(step_percent / 100.0) - 1e-9) + 1
        axes.append(torch.from_numpy(np.geomspace(low, high, n_points)))
    t1_ms, t2_ms = torch.meshgrid(axes[0], axes[1], indexing="ij")
    keep = t2_ms < t1_ms
    return t1_ms[keep], t2_ms[keep]


@dataclass(frozen=True)
class MrfDictionary:
    """A simulated FISP-MRF dictionary with its rank-K temporal subspace.

    ``subspace`` documents the projection convention: coefficients ``c = basis^H s``, i.e. ``compressed =
    fingerprints @ basis.conj()``, and back-projection ``s ~ basis c``.
    """

    schedule: FispSchedule
    """The train the atoms were simulated with."""
    t1_ms: torch.Tensor
    """T1 of every atom, ms, float64. Shape `(atoms,)`."""
    t2_ms: torch.Tensor
    """T2 of every atom, ms, float64. Shape `(atoms,)`."""
    fingerprints: torch.Tensor
    """Signal of every atom, unit L2 norm over frames, complex64 (real-valued). Shape `(atoms, frames)`."""
    norms: torch.Tensor
    """L2 norm of every atom's M0 = 1 signal before normalisation (the PD scale), float32. Shape `(atoms,)`."""
    basis: torch.Tensor
    """Orthonormal temporal SVD basis ``V``, complex64. Shape `(frames, rank)`."""
    energy_kept: float
    """Fraction of the dictionary's energy in the span of ``basis`` (mean over atoms, the atoms being unit-norm)."""
    n_states: int
    """EPG dephasing orders the atoms were simulated with."""

    def __post_init__(self) -> None:
        n_atoms, n_frames = self.t1_ms.shape[0], self.schedule.n_frames
        shapes = {
            "t1_ms": (self.t1_ms.shape, (n_atoms,)),
            "t2_ms": (self.t2_ms.shape, (n_atoms,)),
            "fingerprints": (self.fingerprints.shape, (n_atoms, n_frames)),
            "norms": (self.norms.shape, (n_atoms,)),
            "basis": (self.basis.shape[:1], (n_frames,)),
        }
        wrong = {name: tuple(shape) for name, (shape, expected) in shapes.items() if tuple(shape) != expected}
        if wrong or self.basis.ndim != 2:
            raise ValueError(
                f"MRF dictionary arrays disagree with {n_atoms} atoms x {n_frames} frames: {wrong or 'basis not 2-D'}"
            )

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.t1_ms.shape[0])

    @property
    def rank(self) -> int:
        """Number of basis vectors."""
        return int(self.basis.shape[1])

    @property
    def compressed(self) -> torch.Tensor:
        """Subspace coefficients of every unit atom, ``fingerprints @ basis.conj()``. Shape `(atoms, rank)`."""
        return to_subspace(self.fingerprints, self.basis)

    def to(self, device: torch.device | str) -> "MrfDictionary":
        """Return the dictionary with its tensors on ``device``."""
        return replace(
            self,
            t1_ms=self.t1_ms.to(device),
            t2_ms=self.t2_ms.to(device),
            fingerprints=self.fingerprints.to(device),
            norms=self.norms.to(device),
            basis=self.basis.to(device),
        )


def build_dictionary(
    schedule: FispSchedule,
    *,
    grid: tuple[torch.Tensor, torch.Tensor] | None = None,
    rank: int = DEFAULT_RANK,
    n_states: int = N_STATES,
    device: torch.device | str = "auto",
    cache: bool = True,
    cache_dir: Path | None = None,
) -> MrfDictionary:
    """Return the dictionary of ``schedule`` over ``grid``, from the disk cache when it holds it, else simulated.

    Parameters
    ----------
    schedule : The FISP-MRF train.
    grid : ``(t1_ms, t2_ms)`` of the atoms, each shape `(atoms,)`; None for ``t1_t2_grid()``.
    rank : Rank of the temporal SVD basis.
    n_states : EPG dephasing orders simulated.
    device : Where to simulate and where the result lives: ``auto`` (CUDA when present), ``cpu``, ``cuda``.
    cache : Whether to read and write the disk cache.
    cache_dir : Cache folder; None for ``default_cache_dir()``.

    Returns
    -------
    The dictionary, on ``device``.
    """
    t1_ms, t2_ms = t1_t2_grid() if grid is None else grid
    t1_ms, t2_ms = t1_ms.detach().to("cpu", torch.float64), t2_ms.detach().to("cpu", torch.float64)
    if t1_ms.ndim != 1 or t1_ms.shape != t2_ms.shape or t1_ms.numel() == 0:
        raise ValueError(f"grid must be two non-empty (atoms,) tensors, got {tuple(t1_ms.shape)}, {tuple(t2_ms.shape)}")
    if not 1 <= rank <= schedule.n_frames:
        raise ValueError(f"rank must be in [1, {schedule.n_frames}] (the frames), got {rank}")
    target = device if isinstance(device, torch.device) else torch_device(device)
    key = dictionary_key(schedule, t1_ms, t2_ms, n_states=n_states, rank=rank)
    path = (default_cache_dir() if cache_dir is None else cache_dir) / f"fisp_mrf_{key[:32]}.npz"
    if cache and path.exists():
        loaded = _load(path, key)
        if loaded is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: the last to be pruned
            logger.info("loaded MRF dictionary %s (%d atoms x %d frames)", path, loaded.n_atoms, schedule.n_frames)
            return loaded.to(target)
    start = time.perf_counter()
    fingerprints = fisp_fingerprints(
        t1_ms.to(target, torch.float32), t2_ms.to(target, torch.float32), schedule, n_states=n_states
    )
    parts = torch.view_as_real(fingerprints)  # normalised in place through its real view: complex division is slow
    norms = torch.linalg.vector_norm(parts, dim=(-2, -1))
    if not bool((norms > 0).all()):
        raise ValueError("the schedule gives an all-zero fingerprint (are all flip angles 0?)")
    parts.mul_(norms.reciprocal()[:, None, None])
    basis, energy_kept = svd_basis(fingerprints, rank)
    if target.type == "cuda":
        torch.cuda.synchronize(target)
    logger.info(
        "built MRF dictionary: %d atoms x %d frames, %d EPG orders, on %s in %.2f s; rank %d keeps %.5f of the energy",
        t1_ms.numel(),
        schedule.n_frames,
        n_states,
        target,
        time.perf_counter() - start,
        rank,
        energy_kept,
    )
    dictionary = MrfDictionary(
        schedule, t1_ms.to(target), t2_ms.to(target), fingerprints, norms, basis, energy_kept, n_states
    )
    if cache:
        _save(path, key, dictionary)
    return dictionary


def dictionary_key(
    schedule: FispSchedule, t1_ms: torch.Tensor, t2_ms: torch.Tensor, *, n_states: int, rank: int
) -> str:
    """Return the sha256 hex digest naming a dictionary: schedule, grid values, EPG orders, rank and version.

    Parameters
    ----------
    schedule : The train.
    t1_ms : T1 of the atoms, ms. Shape `(atoms,)`.
    t2_ms : T2 of the atoms, ms. Shape `(atoms,)`.
    n_states : EPG orders.
    rank : SVD rank.

    Returns
    -------
    The digest.
    """
    grid = hashlib.sha256()
    for values in (t1_ms, t2_ms):
        grid.update(values.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    content = {
        "version": DICTIONARY_VERSION,
        "schedule": schedule.key(),
        "grid": grid.hexdigest(),
        "n_states": n_states,
        "rank": rank,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """Return the dictionary cache folder: ``$QMRI_CACHE_DIR/mrf``, else ``~/.cache/qmri-gadgets/mrf``."""
    root = os.environ.get("QMRI_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "qmri-gadgets") / "mrf"


def _save(path: Path, key: str, dictionary: MrfDictionary) -> None:
    """Write the dictionary to ``path`` under a temporary name, then rename it (readers never see half a file).

    Real-valued fingerprints (as the EPG gives) are stored as their real part, half the size.
    """
    fingerprints = dictionary.fingerprints.cpu()
    if not bool(fingerprints.imag.any()):
        fingerprints = fingerprints.real
    meta = {"key": key, "version": DICTIONARY_VERSION, "n_states": dictionary.n_states}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".part", delete=False)  # noqa: SIM115
    partial = Path(handle.name)
    try:
        with handle:
            np.savez(
                handle,
                meta=np.array(json.dumps(meta)),
                schedule=np.array(dictionary.schedule.to_json()),
                t1_ms=dictionary.t1_ms.cpu().numpy(),
                t2_ms=dictionary.t2_ms.cpu().numpy(),
                fingerprints=fingerprints.numpy(),
                norms=dictionary.norms.cpu().numpy(),
                basis=dictionary.basis.cpu().numpy(),
                energy_kept=np.array(dictionary.energy_kept),
            )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    _prune(path.parent, CACHE_MAX_FILES)


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used dictionaries in the cache folder."""
    files = []
    for path in folder.glob("fisp_mrf_*.npz"):
        with contextlib.suppress(OSError):
            files.append((path.stat().st_mtime_ns, path))
    for _, path in sorted(files, reverse=True)[keep:]:
        path.unlink(missing_ok=True)


def _load(path: Path, key: str) -> MrfDictionary | None:
    """Return the dictionary cached in ``path``, or None (logged) when the file is unreadable or not for ``key``."""
    try:
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if not isinstance(meta, dict) or meta.get("key") != key or meta.get("version") != DICTIONARY_VERSION:
                logger.warning("MRF dictionary cache %s is stale (made for another key or version); rebuilding", path)
                return None
            dictionary = MrfDictionary(
                schedule=FispSchedule.from_json(str(stored["schedule"])),
                t1_ms=torch.from_numpy(stored["t1_ms"]),
                t2_ms=torch.from_numpy(stored["t2_ms"]),
                fingerprints=torch.from_numpy(stored["fingerprints"]).to(torch.complex64),
                norms=torch.from_numpy(stored["norms"]),
                basis=torch.from_numpy(stored["basis"]),
                energy_kept=float(stored["energy_kept"]),
                n_states=int(meta["n_states"]),
            )
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        logger.warning("MRF dictionary cache %s is unreadable (%s); rebuilding", path, exc)
        return None
    return dictionary
