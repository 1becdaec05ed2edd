"""The streaming state of a spiral MRF slice: every readout gridded into the temporal subspace as it arrives.

Every frame ``t`` of an MRF scan is one spiral interleaf; its image series is modelled in the dictionary's temporal
subspace, ``s_t = sum_k V[t, k] c_k`` (``qmri_models.mrf.subspace``). With ``F_j`` the NUFFT of trajectory slot
``j`` and the frames ``t`` that played it, the data enter the reconstruction (``subspace_operator``) only through

- ``z_j = sum_{t in j} conj(V[t]) y_t`` `(K, coils, samples)`, and ``z_j`` only through its gridded coil images
  ``sum_j F_j^H W z_j`` `(K, coils, y, x)`, ``W`` being the density compensation of one interleaf;
- ``G_j = sum_{t in j} conj(V[t]) V[t]^T`` `(K, K)`.

``SubspaceAccumulator`` grids the readouts into those K images per coil in small batches as the frames stream in,
and keeps ``G_j`` and the trajectory per slot and ``z_j`` on the spiral centre only (for the coil sensitivities,
``subspace_calibration``): a slice holds K coil images, never all frames. A slot is one distinct trajectory: a fixed
set of interleaves played in turn (Jiang et al. 2015) gives as many slots as interleaves; golden-angle rotations
give one per frame. ``SubspaceAccumulator.result`` hands the state on as a ``SubspaceKspace``.

Shapes: basis `(frames, K)` complex64; trajectory slot coordinates `(samples, 2)` ``(ky, kx)`` in cycles per field
of view (``qmri_models.recon.nufft``'s convention).
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from qmri_models.recon.nufft import Backend, NufftOp, density_compensation

CALIBRATION_MATRIX = 32
"""Side of the centred k-space square whose samples keep their ``z_j`` (the spiral centre), and of the low-resolution
grid of the sensitivities' per-coil reconstruction on them (``subspace_calibration``), in pixels (32 and 64 gave the
same maps at 256^2)."""
BUFFER_FRAMES = 25
"""Readouts ``SubspaceAccumulator`` grids together: 3.4 MB of buffer at 8 coils x 2101 samples, 8 gridding passes
for the default 200 frames."""
SAME_TRAJECTORY_TOLERANCE = 1e-3
"""Largest difference, in cycles per field of view, between two readouts of the same trajectory slot."""


@dataclass
class SubspaceKspace:
    """One slice's readouts in the temporal subspace: gridded per coil, plus what the normal operator needs.

    Nothing here holds all frames: the coil images are K images per coil, the calibration data cover the spiral
    centre only, and the rest is per trajectory slot (coordinates, weights, Gram matrices).
    """

    coil_images: torch.Tensor = field(repr=False)
    """``sum_j F_j^H W z_j`` per coil: every frame gridded with its interleaf's density compensation and projected
    onto the subspace. Shape `(K, coils, y, x)` complex64."""
    coord: np.ndarray = field(repr=False)
    """Trajectory of every slot, ``(ky, kx)`` in cycles per FOV. Shape `(slots, samples, 2)` float32."""
    dcf: np.ndarray = field(repr=False)
    """Density compensation ``W`` of every slot as a lone interleaf. Shape `(slots, samples)` float32."""
    gram: np.ndarray = field(repr=False)
    """Temporal Gram matrices ``G_j``. Shape `(slots, K, K)` complex64."""
    calibration_coord: np.ndarray = field(repr=False)
    """Every slot's samples inside the centred ``CALIBRATION_MATRIX``-square, padded with zeros. Shape
    `(slots, calibration_samples, 2)` float32."""
    calibration_data: np.ndarray = field(repr=False)
    """``z_j`` on those samples (0 on the padding). Shape `(K, coils, slots, calibration_samples)` complex64."""
    calibration_dcf: np.ndarray = field(repr=False)
    """``W`` on those samples, 0 on the padding. Shape `(slots, calibration_samples)` float32."""
    n_frames: int
    """Readouts accumulated."""


@dataclass
class _Slot:
    """One distinct trajectory of a slice and what its frames have left."""

    coord: np.ndarray
    dcf: np.ndarray
    calibration: np.ndarray
    """Indices of the samples inside the centred ``CALIBRATION_MATRIX``-square."""
    gram: np.ndarray
    calibration_data: np.ndarray


class SubspaceAccumulator:
    """Grids each readout of a slice into the subspace as it arrives (the streaming state of an MRF slice).

    Readouts wait in a buffer of ``buffer_frames``; a full buffer is gridded with one adjoint NUFFT per coefficient
    (``conj(V[t, k]) W y_t`` of all its frames) and added to the K coil images, so the state is the K coil images,
    the buffer, and per trajectory slot its coordinates, weights, Gram matrix and the projected spiral centre
    ``z_j`` (for the sensitivities). None of it grows with the frames except for golden-angle orderings, whose
    every frame is a slot.

    Parameters
    ----------
    basis : Temporal basis ``V`` of the acquired frames. Shape `(frames, K)` complex.
    n_coils : Receive channels of every readout.
    n_samples : Samples of every readout.
    image_shape : Image size ``(ny, nx)``.
    buffer_frames : Readouts gridded together.
    backend : NUFFT backend.
    device : Where the coil images live and the gridding runs.
    """

    def __init__(
        self,
        basis: np.ndarray,
        *,
        n_coils: int,
        n_samples: int,
        image_shape: tuple[int, int],
        buffer_frames: int = BUFFER_FRAMES,
        backend: Backend = "auto",
        device: torch.device | str = "cpu",
    ) -> None:
        if basis.ndim != 2:
            raise ValueError(f"basis must be (frames, K), got shape {basis.shape}")
        if buffer_frames < 1:
            raise ValueError(f"buffer_frames must be at least 1, got {buffer_frames}")
        self.basis = np.asarray(basis, dtype=np.complex64)
        self.n_coils = n_coils
        self.n_samples = n_samples
        self.image_shape = image_shape
        self.buffer_frames = buffer_frames
        self.backend: Backend = backend
        self.device = torch.device(device)
        rank = self.basis.shape[1]
        self._coil_images = torch.zeros((rank, n_coils, *image_shape), dtype=torch.complex64, device=self.device)
        self._slots: dict[bytes, _Slot] = {}
        self._pending: list[tuple[int, bytes, np.ndarray]] = []
        self.n_frames = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the accumulated state in bytes (weights that rotated slots share are counted once)."""
        arrays = {
            id(a): a.nbytes
            for slot in self._slots.values()
            for a in (slot.coord, slot.dcf, slot.calibration, slot.gram, slot.calibration_data)
        }
        slots = sum(arrays.values())
        pending = sum(readout.nbytes for _, _, readout in self._pending)
        return self._coil_images.element_size() * self._coil_images.nelement() + slots + pending

    @property
    def n_slots(self) -> int:
        """Distinct trajectories (interleaf rotations) seen so far."""
        return len(self._slots)

    def add(self, frame: int, coord: np.ndarray, readout: np.ndarray) -> None:
        """Accumulate one readout into the slot of its trajectory (a new slot for a trajectory not seen before).

        Parameters
        ----------
        frame : Frame index into the basis (the readout's place in the flip-angle schedule).
        coord : The readout's k-space positions ``(ky, kx)`` in cycles per FOV. Shape `(samples, 2)`.
        readout : Coil samples. Shape `(coils, samples)` complex.
        """
        n_frames = self.basis.shape[0]
        if not 0 <= frame < n_frames:
            raise ValueError(f"frame {frame} is outside the schedule's {n_frames} acquired frames")
        if readout.shape != (self.n_coils, self.n_samples):
            raise ValueError(
                f"readout of frame {frame} has shape {readout.shape}; expected ({self.n_coils}, {self.n_samples})"
            )
        if coord.shape != (self.n_samples, 2):
            raise ValueError(f"trajectory of frame {frame} has shape {coord.shape}; expected ({self.n_samples}, 2)")
        key = self._slot_of(np.asarray(coord, dtype=np.float32))
        slot = self._slots[key]
        weights = self.basis[frame].conj()
        data = np.asarray(readout, dtype=np.complex64)
        slot.calibration_data += weights[:, None, None] * data[None, :, slot.calibration]
        slot.gram += np.outer(weights, self.basis[frame])
        self._pending.append((frame, key, data))
        self.n_frames += 1
        if len(self._pending) >= self.buffer_frames:
            self._grid_pending()

    def _slot_of(self, coord: np.ndarray) -> bytes:
        """Return the slot of a trajectory, keyed by its rounded end points; create the slot if it is new."""
        key = np.round(coord[[self.n_samples // 2, -1]] / SAME_TRAJECTORY_TOLERANCE).astype(np.int64).tobytes()
        known = self._slots.get(key)
        if known is None:
            rank = self.basis.shape[1]
            calibration = np.flatnonzero(np.all(np.abs(coord) < CALIBRATION_MATRIX / 2, axis=-1))
            self._slots[key] = _Slot(
                coord=coord,
                dcf=self._interleaf_density(coord),
                calibration=calibration,
                gram=np.zeros((rank, rank), np.complex64),
                calibration_data=np.zeros((rank, self.n_coils, calibration.size), np.complex64),
            )
        elif np.abs(coord - known.coord).max() > SAME_TRAJECTORY_TOLERANCE:
            raise ValueError("two readouts share their trajectory's end points but not the rest of it")
        return key

    def _interleaf_density(self, coord: np.ndarray) -> np.ndarray:
        """Return the density compensation of a trajectory as a lone interleaf (gridding one frame is unbiased).

        A rotation of the first slot (the same radius at every sample) shares its weights.
        """
        if self._slots:
            first = next(iter(self._slots.values()))
            radii = np.linalg.norm(coord, axis=-1)
            if np.allclose(radii, np.linalg.norm(first.coord, axis=-1), atol=SAME_TRAJECTORY_TOLERANCE):
                return first.dcf
        return density_compensation(coord, self.image_shape)

    def _grid_pending(self) -> None:
        """Grid the buffered readouts into the coil images, one adjoint NUFFT per coefficient, and empty the buffer."""
        if not self._pending:
            return
        frames = [frame for frame, _, _ in self._pending]
        slots = [self._slots[key] for _, key, _ in self._pending]
        nufft = NufftOp(
            np.stack([slot.coord for slot in slots]), self.image_shape, backend=self.backend, device=self.device
        )
        dcf = torch.from_numpy(np.stack([slot.dcf for slot in slots])).to(self.device)
        readouts = torch.from_numpy(np.stack([readout for _, _, readout in self._pending], axis=1)).to(self.device)
        compensated = dcf * readouts
        weights = torch.from_numpy(self.basis[frames].conj()).to(self.device)
        for k in range(self.basis.shape[1]):
            self._coil_images[k] += nufft.adjoint(weights[:, k, None] * compensated)
        self._pending.clear()

    def result(self) -> SubspaceKspace:
        """Return the accumulated state, slots in the order their trajectories first arrived (grids the buffer)."""
        if not self.n_frames:
            raise ValueError("no readouts were accumulated for this slice")
        self._grid_pending()
        slots = list(self._slots.values())
        rank = self.basis.shape[1]
        width = max(slot.calibration.size for slot in slots)
        calibration_coord = np.zeros((len(slots), width, 2), np.float32)
        calibration_dcf = np.zeros((len(slots), width), np.float32)
        calibration_data = np.zeros((rank, self.n_coils, len(slots), width), np.complex64)
        for j, slot in enumerate(slots):
            n = slot.calibration.size
            calibration_coord[j, :n] = slot.coord[slot.calibration]
            calibration_dcf[j, :n] = slot.dcf[slot.calibration]
            calibration_data[:, :, j, :n] = slot.calibration_data
        return SubspaceKspace(
            coil_images=self._coil_images,
            coord=np.stack([slot.coord for slot in slots]),
            dcf=np.stack([slot.dcf for slot in slots]),
            gram=np.stack([slot.gram for slot in slots]),
            calibration_coord=calibration_coord,
            calibration_data=calibration_data,
            calibration_dcf=calibration_dcf,
            n_frames=self.n_frames,
        )
