"""Variable-density spiral interleaves for MR fingerprinting, and which rotation each frame plays.

Coordinates follow sigpy's NUFFT convention: the last axis is ``(ky, kx)`` in cycles per field of view, so a
``matrix``-pixel image is sampled within ``|k| <= matrix / 2``. Interleaf 0 starts at the centre along ``+kx``; a
rotation by ``angle_rad`` turns ``kx + i ky`` into ``(kx + i ky) * exp(i angle_rad)``.

The interleaf is the analytic variable-density design of Kim, Adalsteinsson and Spielman (MRM 2003) as
``sigpy.mri.spiral`` implements it: ``|k|`` grows as ``tau ** alpha`` along the readout, so the turns are denser
near the centre than at the edge, and ``n_interleaves`` rotated copies sample the edge of k-space at about Nyquist.
With the defaults (256 matrix, 220 mm, 48 interleaves, alpha 1.5) an interleaf has 2101 samples, about 100k for all
48, as in Jiang et al., MRM 2015 (FISP-MRF: 48 interleaves, one per frame, rotated by 7.5 degrees).

Frames play either the fixed set in turn (frame ``t`` plays interleaf ``t mod n_interleaves``, as in Jiang 2015) or
golden-angle rotations (frame ``t`` is rotated by ``t`` times 137.5 degrees, ``GOLDEN_ANGLE_RAD``).
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import sigpy.mri

Ordering = Literal["fixed", "golden"]
ORDERINGS: tuple[str, ...] = ("fixed", "golden")
"""Frame orderings: the fixed set of interleaves in turn, or golden-angle rotations."""

GOLDEN_ANGLE_RAD = float(np.pi * (3.0 - np.sqrt(5.0)))
"""Golden angle for rotations over the full circle, 2 pi (2 - phi), about 137.51 degrees."""

GYROMAGNETIC_RATIO_HZ_PER_T = 42.577_478e6
"""Proton gyromagnetic ratio over 2 pi, in Hz/T."""


@dataclass(frozen=True)
class SpiralDesign:
    """Parameters of the variable-density spiral interleaf; every default is the FISP-MRF one.

    Attributes
    ----------
    matrix : Image size in pixels per side; the spiral reaches ``|k| = matrix / 2``.
    n_interleaves : Interleaves that together sample the edge of k-space at about Nyquist, at most ``matrix / 2``.
    fov_mm : Field of view per side in mm.
    alpha : Variable-density exponent: ``|k|`` grows as ``tau ** alpha`` (1 is a uniform Archimedean spiral).
    readout_undersampling : sigpy's ``f_sampling``: sample spacing along the readout relative to 1/FOV at the edge.
    max_gradient_mt_per_m : Largest gradient amplitude in mT/m; fixes the dwell time.
    max_slew_t_per_m_per_s : Largest slew rate in T/m/s.
    """

    matrix: int = 256
    n_interleaves: int = 48
    fov_mm: float = 220.0
    alpha: float = 1.5
    readout_undersampling: float = 0.5
    max_gradient_mt_per_m: float = 40.0
    max_slew_t_per_m_per_s: float = 150.0

    def __post_init__(self) -> None:
        if self.matrix < 8:
            raise ValueError(f"matrix must be at least 8, got {self.matrix}")
        if not 1 <= self.n_interleaves <= self.matrix // 2:
            raise ValueError(f"n_interleaves must lie in 1..{self.matrix // 2} (matrix / 2), got {self.n_interleaves}")
        for name in ("fov_mm", "readout_undersampling", "max_gradient_mt_per_m", "max_slew_t_per_m_per_s"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if not 1.0 <= self.alpha <= 8.0:
            raise ValueError(f"alpha must lie in [1, 8], got {self.alpha}")

    def interleaf(self) -> np.ndarray:
        """Return interleaf 0 of the design, ``|k| <= matrix / 2``.

        Returns
        -------
        k-space coordinates ``(ky, kx)`` in cycles per FOV. Shape `(samples, 2)` float64.
        """
        fov_m = self.fov_mm / 1000.0
        k_per_m = sigpy.mri.spiral(
            fov_m,
            self.matrix,
            self.readout_undersampling,
            1.0,
            self.n_interleaves,
            self.alpha,
            self.max_gradient_mt_per_m / 1000.0,
            self.max_slew_t_per_m_per_s,
        )
        k = k_per_m[: len(k_per_m) // self.n_interleaves] * fov_m  # sigpy stacks all interleaves; keep the first
        k *= min(1.0, (self.matrix / 2) / float(np.hypot(k[:, 0], k[:, 1]).max()))
        return np.ascontiguousarray(k[:, ::-1])

    def dwell_us(self) -> float:
        """Return the sample spacing in time that puts the interleaf's peak gradient at the gradient limit, in us.

        ``sigpy.mri.spiral`` fixes the sample positions, not their timing; this dwell keeps the gradient within
        ``max_gradient_mt_per_m`` everywhere (the slew rate stays within its limit except over the first few dozen
        samples, where the analytic design starts with a non-zero gradient).
        """
        k = self.interleaf() / (self.fov_mm / 1000.0)
        step_per_m = float(np.hypot(*np.diff(k, axis=0).T).max(initial=0.0))
        return 1e6 * step_per_m / (GYROMAGNETIC_RATIO_HZ_PER_T * self.max_gradient_mt_per_m / 1000.0)


def rotate(coord: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """Return copies of an interleaf rotated in plane by each angle.

    Parameters
    ----------
    coord : Interleaf coordinates ``(ky, kx)`` in cycles per FOV. Shape `(samples, 2)`.
    angle_rad : Rotation of each copy in radians, counter-clockwise from ``+kx`` towards ``+ky``. Shape `(*other,)`.

    Returns
    -------
    Rotated coordinates ``(ky, kx)``. Shape `(*other, samples, 2)`, the dtype of ``coord``.
    """
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 2:
        raise ValueError(f"coord must have shape (samples, 2), got {coord.shape}")
    angle = np.asarray(angle_rad, dtype=np.float64)[..., None]
    cos, sin = np.cos(angle), np.sin(angle)
    ky, kx = coord[:, 0], coord[:, 1]
    return np.stack([kx * sin + ky * cos, kx * cos - ky * sin], axis=-1).astype(coord.dtype)


def spiral_trajectory(design: SpiralDesign) -> np.ndarray:
    """Return the fixed set of interleaves: interleaf ``i`` is interleaf 0 rotated by ``2 pi i / n_interleaves``.

    Parameters
    ----------
    design : Spiral design.

    Returns
    -------
    Coordinates ``(ky, kx)`` in cycles per FOV. Shape `(n_interleaves, samples, 2)` float64.
    """
    return rotate(design.interleaf(), 2 * np.pi * np.arange(design.n_interleaves) / design.n_interleaves)


@dataclass(frozen=True)
class FrameRotations:
    """Which spiral each frame plays.

    Attributes
    ----------
    interleaf : Index into the fixed set; for golden-angle ordering the nearest one (a label only). Shape `(frames,)`.
    angle_rad : Exact rotation of each frame's spiral from interleaf 0, in radians in [0, 2 pi). Shape `(frames,)`.
    """

    interleaf: np.ndarray
    angle_rad: np.ndarray


def frame_rotations(n_frames: int, n_interleaves: int, ordering: Ordering = "fixed") -> FrameRotations:
    """Return the spiral rotation of every frame.

    Parameters
    ----------
    n_frames : Frames acquired, at least 1.
    n_interleaves : Size of the fixed set of interleaves, at least 1.
    ordering : ``fixed``: frame ``t`` plays interleaf ``t mod n_interleaves``; ``golden``: frame ``t`` is rotated
        by ``t * GOLDEN_ANGLE_RAD`` and labelled with the nearest interleaf of the fixed set.

    Returns
    -------
    Interleaf label and exact rotation of every frame.
    """
    if n_frames < 1 or n_interleaves < 1:
        raise ValueError(f"need at least one frame and one interleaf, got {n_frames} and {n_interleaves}")
    step = 2 * np.pi / n_interleaves
    frames = np.arange(n_frames)
    if ordering == "fixed":
        interleaf = frames % n_interleaves
        return FrameRotations(interleaf=interleaf, angle_rad=interleaf * step)
    if ordering == "golden":
        angle = np.mod(frames * GOLDEN_ANGLE_RAD, 2 * np.pi)
        return FrameRotations(interleaf=np.round(angle / step).astype(np.int64) % n_interleaves, angle_rad=angle)
    raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}, got {ordering!r}")


def ismrmrd_traj(coord: np.ndarray, matrix: int) -> np.ndarray:
    """Return coordinates in the layout of an ISMRMRD readout's ``traj``: ``(kx, ky)`` over ``matrix``, in [-0.5, 0.5].

    Parameters
    ----------
    coord : Coordinates ``(ky, kx)`` in cycles per FOV. Shape `(*other, samples, 2)`.
    matrix : Image size in pixels per side.

    Returns
    -------
    ``(kx, ky)`` in cycles per FOV divided by ``matrix``. Shape `(*other, samples, 2)` float32.
    """
    return (np.asarray(coord)[..., ::-1] / matrix).astype(np.float32)


def coord_from_ismrmrd_traj(traj: np.ndarray, matrix: int) -> np.ndarray:
    """Return sigpy-convention coordinates from an ISMRMRD ``traj`` written by :func:`ismrmrd_traj`.

    Parameters
    ----------
    traj : ``(kx, ky)`` in cycles per FOV divided by ``matrix``. Shape `(*other, samples, 2)`.
    matrix : Image size in pixels per side.

    Returns
    -------
    Coordinates ``(ky, kx)`` in cycles per FOV. Shape `(*other, samples, 2)` float32.
    """
    traj = np.asarray(traj)
    if traj.shape[-1] != 2:
        raise ValueError(f"traj must have 2 trajectory dimensions (kx, ky), got shape {traj.shape}")
    return (traj[..., ::-1] * np.float32(matrix)).astype(np.float32)
