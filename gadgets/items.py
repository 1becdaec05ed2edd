"""Items that travel between our gadgets where the ISMRMRD types are not rich enough.

They are converted back to ``ismrmrd.Image`` (meaning in meta) by the output gadgets before reaching the client, and
to Gadgetron's own types where one exists (``gadgets.gadgetron_types``: a SliceBuffer is a ``ReconData``, phase
images an ``ImageArray``) when they cross into a Gadgetron stream. Every item carries its slice's
:class:`SliceContext`, handed on as one value.
"""

from dataclasses import dataclass, field

import ismrmrd
import numpy as np

from qmri_models.fitting.maps import SliceMaps
from qmri_models.mrf.dictionary import MrfDictionary


@dataclass(frozen=True)
class SliceContext:
    """Where a slice's items come from: its index, the readouts giving its images their geometry, its field of view."""

    slice: int
    references: list[ismrmrd.Acquisition] = field(repr=False)
    """First readout of every phase (of the slice for MRF): geometry, time stamps and counters for the images."""
    field_of_view_mm: tuple[float, float, float]
    """Reconstructed field of view ``(x, y, z)`` in mm."""


class _InSlice:
    """The slice context's fields read through the item, for the gadgets that use them."""

    context: SliceContext

    @property
    def slice(self) -> int:
        """The slice index."""
        return self.context.slice

    @property
    def references(self) -> list[ismrmrd.Acquisition]:
        """The readouts the slice's images take their geometry from."""
        return self.context.references

    @property
    def field_of_view_mm(self) -> tuple[float, float, float]:
        """Reconstructed field of view ``(x, y, z)`` in mm."""
        return self.context.field_of_view_mm


@dataclass
class SliceBuffer(_InSlice):
    """One slice's readouts across all phases, placed in zero-filled k-space."""

    kdata: np.ndarray = field(repr=False)
    """k-space. Shape `(phases, coils, ky, kx)` complex64, zero where not acquired; kx is the encoded readout."""
    sampled: np.ndarray = field(repr=False)
    """Acquired lines per phase. Shape `(phases, ky)` bool."""
    calibration_lines: np.ndarray
    """Lines flagged as parallel-imaging calibration (ACS). Shape `(n_calib,)` int."""
    prep_times_ms: np.ndarray
    """Preparation time (TI or T2-prep duration) of every phase in ms. Shape `(phases,)` float."""
    context: SliceContext
    recon_matrix: tuple[int, int]
    """Reconstructed image size ``(y, x)`` in pixels (readout oversampling removed)."""
    readout_headers: np.ndarray = field(repr=False)
    """Header of the readout at every line of every phase, None where none was acquired. Shape `(phases, ky)` object."""


@dataclass
class PhaseImages(_InSlice):
    """Reconstructed images of every phase of one slice."""

    images: np.ndarray = field(repr=False)
    """Coil-combined images. Shape `(phases, y, x)` complex64 (or float32 magnitude for sum of squares)."""
    prep_times_ms: np.ndarray
    """Preparation time of every phase in ms. Shape `(phases,)` float."""
    context: SliceContext
    sens: np.ndarray | None = field(default=None, repr=False)
    """Coil sensitivities used. Shape `(coils, y, x)` complex64, or None."""
    sd: np.ndarray | None = field(default=None, repr=False)
    """Per-phase uncertainty (SD: the error head's, else the MC samples') in image units. `(phases, y, x)` float32."""
    samples: np.ndarray | None = field(default=None, repr=False)
    """The MC samples whose mean ``images`` is. Shape `(T, phases, y, x)` complex64, or None."""


@dataclass
class MapImages(_InSlice):
    """Parametric maps of one slice with their SD maps, fitted from its phase images."""

    maps: SliceMaps = field(repr=False)
    """Maps and SD maps by name (``T1``, ``T2`` ...), units, fit mask."""
    primary_map: str
    """The map the chain is for (``T1`` or ``T2``)."""
    model: str
    """Signal model that was fitted (``molli``, ``t2prep`` ...)."""
    context: SliceContext


@dataclass
class SubspaceImages(_InSlice):
    """One MRF slice reconstructed in the dictionary's temporal subspace."""

    coefficients: np.ndarray = field(repr=False)
    """Subspace coefficient images ``c`` (the series is ``basis @ c``). Shape `(K, y, x)` complex64."""
    dictionary: MrfDictionary = field(repr=False)
    """The dictionary whose basis the coefficients are in, for matching."""
    method: str
    """How the coefficients were reconstructed (``svdmrf``, ``low_rank_cg`` or ``low_rank_admm``)."""
    context: SliceContext
