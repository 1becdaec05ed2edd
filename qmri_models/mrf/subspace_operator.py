"""The subspace encoding operator of one spiral MRF slice: its NUFFT, sensitivity combination and normal operator.

With the temporal subspace ``s_t = sum_k V[t, k] c_k``, ``E_j = F_j S`` (coil sensitivities, then the NUFFT of
trajectory slot ``j``), the interleaf density compensation ``W`` and the accumulated ``z_j`` and ``G_j``
(``subspace_accumulator``):

- ``A^H W y = S^H sum_j F_j^H W z_j`` (``SubspaceOperator.combine`` of the accumulated coil images);
- ``A^H W A c = S^H sum_j F_j^H W G_j F_j S c`` (``SubspaceOperator.normal``).

The interleaf density compensation makes ``E_j^H W E_j`` close to the identity, so the adjoint's coefficients are at
the scale of the true ones. The algorithms that use the operator are in ``subspace_algorithms``.

Shapes: coefficient images `(K, y, x)` complex64; coil sensitivities `(coils, y, x)` complex64 with unit sum of
squares.
"""

import numpy as np
import torch

from qmri_models.mrf.subspace_accumulator import SubspaceKspace
from qmri_models.recon.nufft import Backend, NufftOp


class SubspaceGridding:
    """The slots' NUFFT and their single-interleaf density compensation ``W``, built once per slice.

    Parameters
    ----------
    kspace : The slice's accumulated subspace state (its trajectory and weights).
    image_shape : Image size ``(ny, nx)``.
    backend : NUFFT backend (``qmri_models.recon.nufft``).
    device : Where the reconstruction runs.
    """

    def __init__(
        self,
        kspace: SubspaceKspace,
        image_shape: tuple[int, int],
        *,
        backend: Backend = "auto",
        device: torch.device | str,
    ) -> None:
        self.device = torch.device(device)
        self.nufft = NufftOp(kspace.coord, image_shape, backend=backend, device=self.device)
        self.dcf = torch.from_numpy(kspace.dcf).to(self.device)


class SubspaceOperator:
    """The subspace encoding operator of one slice: its sensitivity combination ``S^H`` and normal operator ``A^H W A``.

    Parameters
    ----------
    gridding : The slice's NUFFT and density compensation.
    kspace : The slice's accumulated subspace k-space (its Gram matrices).
    sens : Coil sensitivities. Shape `(coils, y, x)` complex.
    """

    def __init__(self, gridding: SubspaceGridding, kspace: SubspaceKspace, sens: np.ndarray) -> None:
        self.gridding = gridding
        self.device = gridding.device
        self.gram = torch.from_numpy(kspace.gram).to(self.device)
        self.sens = torch.from_numpy(np.asarray(sens, np.complex64)).to(self.device)

    def combine(self, coil_images: torch.Tensor) -> torch.Tensor:
        """Return ``S^H`` of coil images. ``coil_images`` `(K, coils, y, x)`; returns `(K, y, x)`."""
        return (self.sens.conj() * coil_images).sum(dim=1)

    def normal(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Return ``A^H W A c``. ``coefficients`` `(K, y, x)`; returns the same shape."""
        coil_images = coefficients[:, None] * self.sens
        return self.combine(slot_normal(self.gridding.nufft, self.gridding.dcf, self.gram, coil_images))


def slot_normal(nufft: NufftOp, weights: torch.Tensor, gram: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Return ``sum_j F_j^H W_j G_j F_j`` of coil images, the normal operator without sensitivities.

    Parameters
    ----------
    nufft : NUFFT of every slot's samples, `(slots, samples)`.
    weights : ``W`` of every sample. Shape `(slots, samples)`.
    gram : Temporal Gram matrices ``G_j``. Shape `(slots, K, K)`.
    images : Coil images of every coefficient. Shape `(K, coils, y, x)`.

    Returns
    -------
    The same shape as ``images``.
    """
    return nufft.adjoint(weights * torch.einsum("jkl,lcjs->kcjs", gram, nufft.forward(images)))
