"""Items that travel between our gadgets where the ISMRMRD types are not rich enough.

They are converted back to ``ismrmrd.Image`` (meaning in meta) by the output gadgets before reaching the client.
"""

from dataclasses import dataclass, field

import ismrmrd
import numpy as np

from qmri_models.fitting.maps import SliceMaps
from qmri_models.mrf.dictionary import MrfDictionary


@dataclass
class SliceBuffer:
    """One slice's readouts across all phases, placed in zero-filled k-space."""

    kdata: np.ndarray = field(repr=False)
    """k-space. Shape `(phases, coils, ky, kx)` complex64, zero where not acquired; kx is the encoded readout."""
    sampled: np.ndarray = field(repr=False)
    """Acquired lines per phase. Shape `(phases, ky)` bool."""
    calibration_lines: np.ndarray
    """Lines flagged as parallel-imaging calibration (ACS). Shape `(n_calib,)` int."""
    prep_times_ms: np.ndarray
    """Preparation time (TI or T2-prep duration) of every phase in ms. Shape `(phases,)` float."""
    slice: int
    references: list[ismrmrd.Acquisition] = field(repr=False)
    """First readout of every phase: geometry, time stamps and counters for the images."""
    recon_matrix: tuple[int, int]
    """Reconstructed image size ``(y, x)`` in pixels (readout oversampling removed)."""
    field_of_view_mm: tuple[float, float, float]
    """Reconstructed field of view ``(x, y, z)`` in mm."""


@dataclass
class PhaseImages:
    """Reconstructed images of every phase of one slice."""

    images: np.ndarray = field(repr=False)
    """Coil-combined images. Shape `(phases, y, x)` complex64 (or float32 magnitude for sum of squares)."""
    prep_times_ms: np.ndarray
    """Preparation time of every phase in ms. Shape `(phases,)` float."""
    slice: int
    references: list[ismrmrd.Acquisition] = field(repr=False)
    """First readout of every phase, for geometry."""
    field_of_view_mm: tuple[float, float, float]
    """Field of view ``(x, y, z)`` in mm."""
    sens: np.ndarray | None = field(default=None, repr=False)
    """Coil sensitivities used. Shape `(coils, y, x)` complex64, or None."""
    sd: np.ndarray | None = field(default=None, repr=False)
    """Per-phase uncertainty (SD: the error head's, else the MC samples') in image units. `(phases, y, x)` float32."""
    samples: np.ndarray | None = field(default=None, repr=False)
    """The MC samples whose mean ``images`` is. Shape `(T, phases, y, x)` complex64, or None."""


@dataclass
class MapImages:
    """Parametric maps of one slice with their SD maps, fitted from its phase images."""

    maps: SliceMaps = field(repr=False)
    """Maps and SD maps by name (``T1``, ``T2`` ...), units, fit mask."""
    primary_map: str
    """The map the chain is for (``T1`` or ``T2``)."""
    model: str
    """Signal model that was fitted (``molli``, ``t2prep`` ...)."""
    slice: int
    references: list[ismrmrd.Acquisition] = field(repr=False)
    """First readout of every phase, for geometry."""
    field_of_view_mm: tuple[float, float, float]
    """Field of view ``(x, y, z)`` in mm."""


@dataclass
class SubspaceImages:
    """One MRF slice reconstructed in the dictionary's temporal subspace."""

    coefficients: np.ndarray = field(repr=False)
    """Subspace coefficient images ``c`` (the series is ``basis @ c``). Shape `(K, y, x)` complex64."""
    dictionary: MrfDictionary = field(repr=False)
    """The dictionary whose basis the coefficients are in, for matching."""
    method: str
    """How the coefficients were reconstructed (``svdmrf``, ``low_rank_cg`` or ``low_rank_admm``)."""
    slice: int
    references: list[ismrmrd.Acquisition] = field(repr=False)
    """First readout of the slice, for geometry."""
    field_of_view_mm: tuple[float, float, float]
    """Field of view ``(x, y, z)`` in mm."""
