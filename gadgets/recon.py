"""Cartesian multi-phase reconstruction of a buffered slice: coil maps from the ACS, then every phase."""

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gadgets.items import PhaseImages, SliceBuffer
from gadgets.runtime.config import GadgetConfig, PropertyError, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.recon.cartesian import (
    calibration_lines,
    centered_ifft2,
    crop_readout,
    phase_sensitivities,
    reconstruct_phases,
    sum_of_squares,
)


@dataclass(frozen=True)
class CartesianReconConfig(GadgetConfig):
    """Properties of CartesianReconGadget."""

    method: Literal["zero_filled", "cg_sense"] = prop("cg_sense", "zero_filled (inverse FFT) or cg_sense (sigpy)")
    coil_combine: Literal["espirit", "sos"] = prop(
        "espirit", "espirit maps from the ACS (complex images) or sum of squares (zero_filled only, magnitude)"
    )
    cg_iterations: int = prop(
        10, "conjugate-gradient iterations of CG-SENSE (few: early stopping regularises)", minimum=1, maximum=100
    )
    cg_lambda: float = prop(0.0, "Tikhonov (L2) regularisation weight of CG-SENSE", minimum=0.0)

    def __post_init__(self) -> None:
        if self.coil_combine == "sos" and self.method != "zero_filled":
            raise PropertyError("coil_combine", "sos only works with method zero_filled (CG-SENSE needs coil maps)")


@register("CartesianReconGadget", CartesianReconConfig, consumes=(SliceBuffer,), produces=(PhaseImages,))
def cartesian_recon(connection: GadgetConnection) -> None:
    """Reconstruct every phase of each buffered slice (zero-filled or CG-SENSE with ESPIRiT maps)."""
    config = CartesianReconConfig.from_connection(connection)
    connection.filter(SliceBuffer)
    for item in connection:
        connection.send(reconstruct_slice(item, config))


def reconstruct_slice(buffer: SliceBuffer, config: CartesianReconConfig) -> PhaseImages:
    """Return the reconstructed phase images of one buffered slice.

    Parameters
    ----------
    buffer : The slice's k-space.
    config : Reconstruction properties.

    Returns
    -------
    Images of every phase, readout oversampling removed.
    """
    n_x = buffer.recon_matrix[1]
    if config.coil_combine == "sos":
        images = sum_of_squares(centered_ifft2(buffer.kdata))
        return _phase_images(buffer, crop_readout(images, n_x), sens=None)
    calib = calibration_lines(buffer.sampled, buffer.calibration_lines)
    if calib.size == 0:
        raise ValueError(
            f"slice {buffer.slice}: no calibration lines (flagged ACS or sampled in every phase) for ESPIRiT; "
            "use coil_combine=sos with method=zero_filled"
        )
    sens = phase_sensitivities(buffer.kdata, calib)
    images = reconstruct_phases(
        buffer.kdata, buffer.sampled, sens, method=config.method, lamda=config.cg_lambda, max_iter=config.cg_iterations
    )
    return _phase_images(buffer, crop_readout(images, n_x), sens=crop_readout(sens, n_x))


def _phase_images(buffer: SliceBuffer, images: np.ndarray, *, sens: np.ndarray | None) -> PhaseImages:
    return PhaseImages(
        images=images,
        prep_times_ms=buffer.prep_times_ms,
        context=buffer.context,
        sens=sens,
    )
