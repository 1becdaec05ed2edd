"""Spiral MR fingerprinting on the stream: subspace reconstruction as the frames arrive, then dictionary matching.

The science is ``qmri_models.mrf.recipe``; these gadgets turn ISMRMRD items into its arrays and back.
``MrfReconGadget`` reads the FISP schedule from the header (``qmri_models.mrf.schedule.schedule_from_header``),
builds (or loads from its disk cache) the dictionary and its rank-K SVD basis, and feeds every readout to the
slice's accumulator as it arrives, so a slice holds K coil images, not its hundreds of frames. At the slice's last
readout the recipe reconstructs the K coefficient images (SVDMRF gridding, low-rank conjugate gradient, or that
followed by ADMM rounds towards the dictionary, the default) with coil sensitivities from the data's own spiral
centre, and the gadget sends them on. ``MrfMatchGadget`` matches every pixel to the dictionary and sends T1, T2, PD
and the match score as maps.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import torch

from gadgets.items import MapImages, SliceContext, SubspaceImages
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.device import torch_device
from qmri_models.mrf.dictionary import DEFAULT_STEP_PERCENT
from qmri_models.mrf.matching import MASK_THRESHOLD, MatchIndex, build_match_index
from qmri_models.mrf.recipe import (
    DEFAULT_METHOD,
    DEFAULT_SEARCH,
    MrfMethod,
    MrfRecipe,
    MrfReconOptions,
    MrfSearch,
    match_maps,
    mrf_dictionary,
)
from qmri_models.mrf.schedule import FispSchedule, schedule_from_header
from qmri_models.mrf.subspace import DEFAULT_RANK
from qmri_models.mrf.subspace_accumulator import SubspaceAccumulator
from qmri_models.mrf.subspace_algorithms import (
    ADMM_ROUND_ITERATIONS,
    DEFAULT_ADMM_ROUNDS,
    DEFAULT_CG_ITERATIONS,
    DEFAULT_REGULARISATION,
)
from qmri_models.recon.nufft import Backend
from qmri_models.simulation.spiral import coord_from_ismrmrd_traj

log = logging.getLogger(__name__)

MATCH_MODEL = "FISP-MRF dictionary match"
"""How the maps were made, for image comments."""

MAX_DICTIONARY_ENTRIES = 200_000_000
"""Most atoms x frames a header's schedule and the dictionary grid may ask to simulate (the default 17,553 atoms x
200 frames is 3.5 million; 152,895 atoms at dictionary_step_percent 1 x 1000 frames is 153 million)."""

_NEEDS_SPIRAL = (
    "MrfReconGadget needs spiral readouts that carry their 2-D k-space trajectory in traj; the t1_molli, t2prep, "
    "t1_ir and cartesian_multiphase chains reconstruct Cartesian data"
)


@dataclass(frozen=True)
class MrfReconConfig(GadgetConfig):
    """Properties of MrfReconGadget."""

    method: MrfMethod = prop(
        DEFAULT_METHOD,
        "low_rank_admm (low_rank_cg, then ADMM rounds pulling the images towards the dictionary, Asslander 2018), "
        "low_rank_cg (conjugate gradient on the subspace images) or svdmrf (gridding, McGivney 2014)",
    )
    iterations: int = prop(
        DEFAULT_CG_ITERATIONS,
        "conjugate-gradient iterations of low_rank_cg (also the start of low_rank_admm)",
        minimum=1,
        maximum=100,
    )
    admm_rounds: int = prop(
        DEFAULT_ADMM_ROUNDS,
        f"ADMM rounds of low_rank_admm, each a dictionary match and {ADMM_ROUND_ITERATIONS} CG iterations",
        minimum=1,
        maximum=20,
    )
    regularisation: float = prop(
        DEFAULT_REGULARISATION,
        "prior weight on the strongest subspace image, relative to the data term (weaker components get it scaled "
        "by the dictionary's energy ratio); the prior is centred on zero in low_rank_cg, on the dictionary in "
        "low_rank_admm",
        minimum=0.0,
    )
    rank: int = prop(DEFAULT_RANK, "rank K of the dictionary's temporal SVD subspace", minimum=1, maximum=16)
    dictionary_step_percent: float = prop(
        DEFAULT_STEP_PERCENT,
        "relative step of the dictionary's log-spaced T1 and T2 grid in % (3: about 17k atoms, 1.27: about 95k)",
        minimum=1.0,
        maximum=50.0,
    )
    nufft_backend: Backend = prop(
        "auto", "NUFFT backend: auto (finufft on the CPU, cufinufft on CUDA), finufft, cufinufft or sigpy"
    )
    device: str = prop("auto", "auto (CUDA when present), cpu or cuda")

    def options(self) -> MrfReconOptions:
        """Return the recipe's reconstruction options."""
        return MrfReconOptions(
            method=self.method,
            iterations=self.iterations,
            admm_rounds=self.admm_rounds,
            regularisation=self.regularisation,
            nufft_backend=self.nufft_backend,
        )


@register("MrfReconGadget", MrfReconConfig, consumes=(ismrmrd.Acquisition,), produces=(SubspaceImages,))
def mrf_recon(connection: GadgetConnection) -> None:
    """Grid each spiral readout into the dictionary subspace as it arrives; reconstruct each slice at its end."""
    config = MrfReconConfig.from_connection(connection)
    device = torch_device(config.device)
    protocol = _MrfProtocol.from_header(connection.header)
    dictionary = mrf_dictionary(
        protocol.schedule,
        step_percent=config.dictionary_step_percent,
        rank=config.rank,
        device=device,
        max_entries=MAX_DICTIONARY_ENTRIES,
    )
    recipe = MrfRecipe(dictionary, config.options(), device=device)
    slices: dict[int, _SliceState] = {}
    connection.filter(ismrmrd.Acquisition)
    for item in connection:
        if item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            continue
        _check_spiral_readout(item)
        index = int(item.idx.slice)
        state = slices.get(index)
        if state is None:
            if len(slices) >= protocol.n_slices:
                raise ValueError(
                    f"readout {item.scan_counter} opens slice {index} while slices {sorted(slices)} are still open; "
                    f"the header's encodingLimits promise {protocol.n_slices} slice(s)"
                )
            accumulator = recipe.accumulator(
                n_coils=item.active_channels, n_samples=item.number_of_samples, image_shape=protocol.image_shape
            )
            state = slices[index] = _SliceState(accumulator, item)
        if state.accumulator.n_frames >= protocol.schedule.n_frames:
            raise ValueError(
                f"slice {index}: readout {item.scan_counter} (frame {item.idx.repetition}) would be its readout number "
                f"{state.accumulator.n_frames + 1}, beyond the {protocol.schedule.n_frames} frames of the header's "
                "schedule (one spiral readout per frame) and no ACQ_LAST_IN_SLICE closed the slice"
            )
        state.accumulator.add(int(item.idx.repetition), coord_from_ismrmrd_traj(item.traj, protocol.matrix), item.data)
        if item.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            connection.send(_reconstruct(slices.pop(index), index, recipe, protocol))
    for index, state in sorted(slices.items()):
        log.warning(
            "slice %d: the stream ended before its last readout; reconstructing the %d frames that arrived",
            index,
            state.accumulator.n_frames,
        )
        connection.send(_reconstruct(state, index, recipe, protocol))


@dataclass(frozen=True)
class MrfMatchConfig(GadgetConfig):
    """Properties of MrfMatchGadget."""

    search: MrfSearch = prop(
        DEFAULT_SEARCH, "fast (clustered search, the exhaustive atom for >= 99% of pixels) or exhaustive"
    )
    mask_threshold: float = prop(
        MASK_THRESHOLD,
        "pixels whose signal is below this fraction of the bright-pixel level are left at 0",
        minimum=0.0,
    )
    device: str = prop("auto", "auto (CUDA when present), cpu or cuda")


@register("MrfMatchGadget", MrfMatchConfig, consumes=(SubspaceImages,), produces=(MapImages,))
def mrf_match(connection: GadgetConnection) -> None:
    """Match every pixel's subspace signal to the dictionary: T1, T2, PD and match-score maps."""
    config = MrfMatchConfig.from_connection(connection)
    device = torch_device(config.device)
    indices: dict[int, MatchIndex] = {}
    connection.filter(SubspaceImages)
    for item in connection:
        index = None
        if config.search == "fast":
            key = id(item.dictionary)
            if key not in indices:
                indices[key] = build_match_index(item.dictionary.compressed.to(device))
            index = indices[key]
        connection.send(match_slice(item, config, device, index=index))


def match_slice(
    item: SubspaceImages, config: MrfMatchConfig, device: torch.device, *, index: MatchIndex | None = None
) -> MapImages:
    """Return the T1, T2, PD and match-score maps of one slice's subspace images (``recipe.match_maps``).

    Parameters
    ----------
    item : The slice's coefficient images and the dictionary they live in.
    config : Matching properties.
    device : Where the matching runs.
    index : Clusters of the dictionary for the fast search (``build_match_index``); None builds them.

    Returns
    -------
    Maps: ``T1`` and ``T2`` in ms, ``PD`` in the arbitrary units of the data, ``MatchScore`` in [0, 1].
    """
    start = time.perf_counter()
    maps = match_maps(
        item.coefficients,
        item.dictionary,
        search=config.search,
        mask_threshold=config.mask_threshold,
        index=index,
        device=device,
    )
    log.info(
        "slice %d: matched %d pixels against %d atoms (%s search) in %.2f s on %s",
        item.slice,
        int(maps.mask.sum()),
        item.dictionary.n_atoms,
        config.search,
        time.perf_counter() - start,
        device,
    )
    return MapImages(
        maps=maps,
        primary_map="T1",
        model=f"{MATCH_MODEL} after {item.method}",
        context=item.context,
    )


@dataclass(frozen=True)
class _MrfProtocol:
    """What the header says about an MRF scan: the acquired schedule and the reconstructed image."""

    schedule: FispSchedule
    matrix: int
    """Reconstructed image size per side in pixels (square)."""
    field_of_view_mm: tuple[float, float, float]
    n_slices: int
    """Slices the header's encodingLimits promise (1 without a slice limit): the most open at once."""

    @property
    def image_shape(self) -> tuple[int, int]:
        """Reconstructed image size ``(ny, nx)``."""
        return (self.matrix, self.matrix)

    @classmethod
    def from_header(cls, header: Any) -> "_MrfProtocol":
        """Return the protocol of a parsed ISMRMRD header, or raise ValueError naming what is missing."""
        encoding = header.encoding[0]
        trajectory = getattr(encoding.trajectory, "value", encoding.trajectory)
        if trajectory in ("cartesian", "epi"):
            raise ValueError(f"the header's encoding trajectory is {trajectory}; {_NEEDS_SPIRAL}")
        schedule = schedule_from_header(header)
        recon = encoding.reconSpace
        if recon.matrixSize.x != recon.matrixSize.y:
            raise ValueError(f"MRF images must be square; the header says {recon.matrixSize.x}x{recon.matrixSize.y}")
        fov = recon.fieldOfView_mm
        limits = encoding.encodingLimits
        n_slices = 1 if limits is None or limits.slice is None else int(limits.slice.maximum) + 1
        return cls(schedule, int(recon.matrixSize.x), (fov.x, fov.y, fov.z), max(n_slices, 1))


def _check_spiral_readout(acq: ismrmrd.Acquisition) -> None:
    """Raise ValueError unless the readout carries a 2-D k-space trajectory."""
    dimensions = acq.trajectory_dimensions
    if dimensions == 0:
        raise ValueError(f"readout {acq.scan_counter} carries no k-space trajectory (Cartesian data); {_NEEDS_SPIRAL}")
    if dimensions != 2:
        raise ValueError(f"readout {acq.scan_counter} carries a {dimensions}-D k-space trajectory; {_NEEDS_SPIRAL}")


@dataclass
class _SliceState:
    """One slice's streaming state and its first readout (geometry for the images)."""

    accumulator: SubspaceAccumulator
    reference: ismrmrd.Acquisition = field(repr=False)


def _reconstruct(state: _SliceState, index: int, recipe: MrfRecipe, protocol: _MrfProtocol) -> SubspaceImages:
    """Return the coefficient images of one slice from its accumulated subspace k-space."""
    start = time.perf_counter()
    kspace = state.accumulator.result()
    recon = recipe.reconstruct(kspace, protocol.image_shape, label=f"slice {index}")
    log.info(
        "slice %d: %s of %d frames over %d trajectories (state %.1f MB) in %.1f s on %s (%s)",
        index,
        recipe.options.method,
        kspace.n_frames,
        kspace.coord.shape[0],
        state.accumulator.nbytes / 1e6,
        time.perf_counter() - start,
        recipe.device,
        ", ".join(f"{step} {seconds:.1f} s" for step, seconds in recon.steps_s.items()),
    )
    return SubspaceImages(
        coefficients=recon.coefficients.cpu().numpy(),
        dictionary=recipe.dictionary,
        method=recipe.options.method,
        context=SliceContext(index, [state.reference], protocol.field_of_view_mm),
    )
