"""Coil sensitivities of a spiral MRF slice from its own data: a low-resolution subspace reconstruction per coil.

The accumulator (``subspace_accumulator``) keeps ``z_j`` on the spiral centre; reconstructing every coil from it
(conjugate gradient on the slots' normal operator, ``subspace_operator.slot_normal``) gives ESPIRiT a consistent
calibration block (``subspace_sensitivities``).
"""

import numpy as np
import torch

from qmri_models.mrf.subspace_accumulator import CALIBRATION_MATRIX, SubspaceKspace
from qmri_models.mrf.subspace_operator import SubspaceGridding, slot_normal
from qmri_models.recon.cartesian import centered_fft2, espirit_sensitivities
from qmri_models.recon.conjugate_gradient import conjugate_gradient
from qmri_models.recon.nufft import NufftOp

SENSITIVITY_CALIBRATION = 24
"""Side of the centred k-space block that ESPIRiT calibrates on, in samples."""
CALIBRATION_ITERATIONS = 15
"""Conjugate-gradient iterations of the sensitivities' per-coil reconstruction (relative residual about 0.003)."""


def subspace_sensitivities(
    gridding: SubspaceGridding,
    kspace: SubspaceKspace,
    *,
    iterations: int = CALIBRATION_ITERATIONS,
) -> np.ndarray:
    """Return ESPIRiT coil sensitivities from a low-resolution subspace reconstruction of every coil.

    The samples inside the centred ``CALIBRATION_MATRIX``-square (the densely sampled spiral centre; the
    accumulator keeps their ``z_j``) are reconstructed per coil, without sensitivities, on that low-resolution grid
    by conjugate gradient on ``sum_j F_j^H W G_j F_j x = sum_j F_j^H W z_j``. The first coefficient's coil images,
    transformed back to a Cartesian grid, give ESPIRiT (on the CPU) its centred calibration block. Gridding the first
    coefficient directly is not enough: each interleaf carries its own mix of the coefficients (``G_j``), so that
    centre is not the k-space of one image. Measured at 256^2 (200 frames, 48 interleaves): the mean overlap
    ``|s_true^H s|`` in the tissue rose from 0.79 (gridded) to 0.998, and white-matter T1 error on the worst slice
    from 12% to 4%.

    Parameters
    ----------
    gridding : The slice's NUFFT and density compensation.
    kspace : The slice's accumulated subspace k-space.
    iterations : Conjugate-gradient iterations of the low-resolution reconstruction.

    Returns
    -------
    Sensitivities, unit sum of squares inside the object. Shape `(coils, y, x)` complex64.
    """
    image_shape = gridding.nufft.image_shape
    side = min(CALIBRATION_MATRIX, *image_shape)
    inside = np.all(np.abs(kspace.calibration_coord) < side / 2, axis=-1)
    # samples outside the low-resolution grid (and the padding) are parked at the centre with zero weight
    coord = np.where(inside[..., None], kspace.calibration_coord, 0).astype(np.float32)
    nufft = NufftOp(coord, (side, side), backend=gridding.nufft.backend, device=gridding.device)  # type: ignore[arg-type]
    weights = torch.from_numpy(np.where(inside, kspace.calibration_dcf, 0)).to(gridding.device)
    gram = torch.from_numpy(kspace.gram).to(gridding.device)
    data = torch.from_numpy(kspace.calibration_data).to(gridding.device)
    rhs = nufft.adjoint(weights * data)
    coil_images = (
        conjugate_gradient(
            lambda images: slot_normal(nufft, weights, gram, images), rhs, torch.zeros_like(rhs), iterations
        )[0]
        .cpu()
        .numpy()
    )
    calibration = np.zeros((coil_images.shape[0], *image_shape), np.complex64)
    top, left = image_shape[0] // 2 - side // 2, image_shape[1] // 2 - side // 2
    calibration[:, top : top + side, left : left + side] = centered_fft2(coil_images)
    calibration_side = min(SENSITIVITY_CALIBRATION, side)
    centre = np.arange(calibration_side) + image_shape[0] // 2 - calibration_side // 2
    return espirit_sensitivities(calibration, centre)
