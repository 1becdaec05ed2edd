"""The spiral MRF recipe: what ``MrfReconGadget`` and ``MrfMatchGadget`` run and ``bench/bench_mrf.py`` measures.

One scan:

- ``mrf_dictionary`` builds (or loads from the disk cache) the dictionary of the acquired schedule;
- ``MrfRecipe`` holds it with the reconstruction method and its options (``MrfReconOptions``), and what every slice
  shares: the temporal basis, the dictionary's energy per component and, for ADMM, the compressed atoms and their
  match index.

One slice, streamed (the gadget's path): ``recipe.accumulator(...)`` takes the readouts as they arrive
(``subspace_accumulator``); at the slice's end ``recipe.reconstruct(accumulator.result(), image_shape)`` computes the
coil sensitivities from the data's spiral centre (``subspace_calibration``) and the coefficient images
(``subspace_algorithms``). One slice at once: ``recipe.reconstruct_readouts(frames, coords, readouts,
image_shape)``. Then ``match_maps`` matches every pixel above the signal mask to the dictionary: T1, T2, PD and the
match score.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from qmri_models.fitting.maps import SliceMaps
from qmri_models.mrf.dictionary import DEFAULT_STEP_PERCENT, MrfDictionary, build_dictionary, t1_t2_grid
from qmri_models.mrf.matching import MASK_THRESHOLD, MatchIndex, build_match_index, match_fingerprints, signal_mask
from qmri_models.mrf.schedule import FispSchedule
from qmri_models.mrf.subspace import DEFAULT_RANK
from qmri_models.mrf.subspace_accumulator import BUFFER_FRAMES, SubspaceAccumulator, SubspaceKspace
from qmri_models.mrf.subspace_algorithms import (
    DEFAULT_ADMM_ROUNDS,
    DEFAULT_CG_ITERATIONS,
    DEFAULT_REGULARISATION,
    component_energy,
    dictionary_admm,
    low_rank_cg,
    svdmrf,
)
from qmri_models.mrf.subspace_calibration import subspace_sensitivities
from qmri_models.mrf.subspace_operator import SubspaceGridding, SubspaceOperator
from qmri_models.recon.nufft import Backend

log = logging.getLogger(__name__)

MrfMethod = Literal["low_rank_admm", "low_rank_cg", "svdmrf"]
"""How the coefficient images are reconstructed: ``low_rank_cg`` followed by ``dictionary_admm`` rounds,
``low_rank_cg`` alone, or ``svdmrf`` gridding."""
DEFAULT_METHOD: MrfMethod = "low_rank_admm"
"""The method a scan gets unless it asks for another."""
MrfSearch = Literal["fast", "exhaustive"]
"""Dictionary search of the matching (``matching.match_fingerprints``)."""
DEFAULT_SEARCH: MrfSearch = "fast"
"""The clustered search: exact by its bound, the exhaustive atom for >= 99% of pixels."""
MAP_UNITS = {"T1": "ms", "T2": "ms", "PD": "a.u.", "MatchScore": "1"}
"""The maps ``match_maps`` returns and their units."""


@dataclass(frozen=True)
class MrfReconOptions:
    """The reconstruction method of a slice and its options."""

    method: MrfMethod = DEFAULT_METHOD
    """Reconstruction method."""
    iterations: int = DEFAULT_CG_ITERATIONS
    """Conjugate-gradient iterations of ``low_rank_cg`` (also the start of ``low_rank_admm``)."""
    admm_rounds: int = DEFAULT_ADMM_ROUNDS
    """Rounds of ``dictionary_admm`` (``low_rank_admm``)."""
    regularisation: float = DEFAULT_REGULARISATION
    """Prior weight on the strongest subspace image (``subspace_algorithms.prior_weights``)."""
    nufft_backend: Backend = "auto"
    """NUFFT backend (``qmri_models.recon.nufft``)."""

    def __post_init__(self) -> None:
        if self.method not in get_args(MrfMethod):
            raise ValueError(f"method must be one of {get_args(MrfMethod)}, got {self.method!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.admm_rounds < 1:
            raise ValueError(f"admm_rounds must be at least 1, got {self.admm_rounds}")
        if self.regularisation < 0:
            raise ValueError(f"regularisation must be non-negative, got {self.regularisation}")


@dataclass(frozen=True)
class SubspaceRecon:
    """One slice's coefficient images and what making them cost."""

    coefficients: torch.Tensor = field(repr=False)
    """Subspace coefficient images ``c`` (the series is ``basis @ c``). Shape `(K, y, x)` complex64, on the recipe's
    device."""
    steps_s: dict[str, float]
    """Wall time of every step in order (``gridding``, ``sensitivities``, then ``svdmrf`` or ``low_rank_cg`` and
    ``dictionary_admm``), in s, CUDA synchronised."""


def mrf_dictionary(
    schedule: FispSchedule,
    *,
    step_percent: float = DEFAULT_STEP_PERCENT,
    rank: int = DEFAULT_RANK,
    device: torch.device,
    max_entries: int | None = None,
    cache: bool = True,
) -> MrfDictionary:
    """Return the dictionary of an acquired schedule on the log-spaced grid (``dictionary.build_dictionary``).

    Parameters
    ----------
    schedule : The acquired FISP-MRF train.
    step_percent : Relative step of the grid in T1 and T2, in % (``dictionary.t1_t2_grid``).
    rank : Rank K of the temporal SVD basis.
    device : Where the dictionary is simulated and lives.
    max_entries : Most atoms x frames to simulate; None for no limit.
    cache : Whether to read and write the disk cache.

    Returns
    -------
    The dictionary, on ``device``.
    """
    grid = t1_t2_grid(step_percent)
    entries = grid[0].numel() * schedule.n_frames
    if max_entries is not None and entries > max_entries:
        raise ValueError(
            f"the dictionary would hold {grid[0].numel()} atoms x {schedule.n_frames} frames of the schedule = "
            f"{entries:.3g} entries, more than {max_entries:.3g}; raise the grid's step_percent ({step_percent:g})"
        )
    dictionary = build_dictionary(schedule, grid=grid, rank=rank, device=device, cache=cache)
    log.info(
        "MRF dictionary: %d atoms x %d frames, rank %d keeps %.4f of its energy",
        dictionary.n_atoms,
        schedule.n_frames,
        dictionary.rank,
        dictionary.energy_kept,
    )
    return dictionary


class MrfRecipe:
    """The subspace reconstruction of one scan's slices: its dictionary, the method and what every slice shares.

    Parameters
    ----------
    dictionary : The dictionary of the acquired schedule, whose basis the coefficients are in.
    options : Method and options.
    device : Where the reconstruction runs.
    """

    def __init__(self, dictionary: MrfDictionary, options: MrfReconOptions, *, device: torch.device) -> None:
        self.dictionary = dictionary
        self.options = options
        self.device = device
        self.basis = dictionary.basis.cpu().numpy()
        """Temporal basis ``V`` of the acquired frames. Shape `(frames, K)` complex64."""
        self.energy = component_energy(dictionary.compressed)
        """The dictionary's energy per component, the prior's weights. Shape `(K,)` float64."""
        self.projection: tuple[torch.Tensor, MatchIndex] | None = None
        """The compressed atoms on ``device`` and their match index, for ``low_rank_admm``."""
        if options.method == "low_rank_admm":
            atoms = dictionary.compressed.to(device)
            self.projection = (atoms, build_match_index(atoms))

    def accumulator(
        self, *, n_coils: int, n_samples: int, image_shape: tuple[int, int], buffer_frames: int = BUFFER_FRAMES
    ) -> SubspaceAccumulator:
        """Return an empty streaming state for one slice's readouts, on the recipe's device and NUFFT backend.

        Parameters
        ----------
        n_coils : Receive channels of every readout.
        n_samples : Samples of every readout.
        image_shape : Image size ``(ny, nx)``.
        buffer_frames : Readouts gridded together.
        """
        return SubspaceAccumulator(
            self.basis,
            n_coils=n_coils,
            n_samples=n_samples,
            image_shape=image_shape,
            buffer_frames=buffer_frames,
            backend=self.options.nufft_backend,
            device=self.device,
        )

    def reconstruct(self, kspace: SubspaceKspace, image_shape: tuple[int, int], *, label: str = "") -> SubspaceRecon:
        """Return the coefficient images of one slice's accumulated readouts, sensitivities from the data.

        Parameters
        ----------
        kspace : The slice's accumulated subspace k-space (``SubspaceAccumulator.result``).
        image_shape : Image size ``(ny, nx)``, the accumulator's.
        label : Names the slice in the debug log of the iterations.

        Returns
        -------
        The coefficient images and the time of every step.
        """
        options, steps_s = self.options, {}
        start = _clock(self.device)

        def lap(step: str) -> None:
            nonlocal start
            now = _clock(self.device)
            steps_s[step], start = now - start, now

        gridding = SubspaceGridding(kspace, image_shape, backend=options.nufft_backend, device=self.device)
        lap("gridding")
        operator = SubspaceOperator(gridding, kspace, subspace_sensitivities(gridding, kspace))
        lap("sensitivities")
        if options.method == "svdmrf":
            coefficients = svdmrf(operator, kspace)
            lap("svdmrf")
            return SubspaceRecon(coefficients, steps_s)
        coefficients = low_rank_cg(
            operator,
            kspace,
            iterations=options.iterations,
            regularisation=options.regularisation,
            energy=self.energy,
            on_iteration=lambda i, r: log.debug("%s: CG iteration %d, relative residual %.3g", label, i, r),
        )
        lap("low_rank_cg")
        if self.projection is not None:
            atoms, index = self.projection
            coefficients = dictionary_admm(
                operator,
                kspace,
                coefficients,
                atoms,
                index=index,
                rounds=options.admm_rounds,
                regularisation=options.regularisation,
                energy=self.energy,
                on_round=lambda r: log.debug("%s: ADMM round %d of %d", label, r, options.admm_rounds),
            )
            lap("dictionary_admm")
        return SubspaceRecon(coefficients, steps_s)

    def reconstruct_readouts(
        self, frames: Sequence[int], coords: np.ndarray, readouts: np.ndarray, image_shape: tuple[int, int]
    ) -> SubspaceRecon:
        """Return the coefficient images of one slice's readouts given all at once (the streamed path in one call).

        Parameters
        ----------
        frames : Frame index of every readout into the schedule. Length `readouts`.
        coords : k-space positions ``(ky, kx)`` of every readout in cycles per FOV. Shape `(readouts, samples, 2)`.
        readouts : Coil samples. Shape `(readouts, coils, samples)` complex.
        image_shape : Image size ``(ny, nx)``.

        Returns
        -------
        The coefficient images and the time of every step.
        """
        if readouts.ndim != 3 or coords.shape != (*readouts.shape[::2], 2) or len(frames) != readouts.shape[0]:
            raise ValueError(
                f"readouts {readouts.shape}, coords {coords.shape} and {len(frames)} frames are not "
                "(readouts, coils, samples), (readouts, samples, 2) and one frame per readout"
            )
        accumulator = self.accumulator(n_coils=readouts.shape[1], n_samples=readouts.shape[2], image_shape=image_shape)
        for frame, coord, readout in zip(frames, coords, readouts, strict=True):
            accumulator.add(int(frame), coord, readout)
        return self.reconstruct(accumulator.result(), image_shape)


def match_maps(
    coefficients: np.ndarray,
    dictionary: MrfDictionary,
    *,
    search: MrfSearch = DEFAULT_SEARCH,
    mask_threshold: float = MASK_THRESHOLD,
    index: MatchIndex | None = None,
    device: torch.device,
) -> SliceMaps:
    """Return the T1, T2, PD and match-score maps of one slice's coefficient images (the pixels above the mask).

    Parameters
    ----------
    coefficients : Subspace coefficient images in the dictionary's basis. Shape `(K, y, x)` complex.
    dictionary : The dictionary matched against.
    search : ``fast`` (clustered) or ``exhaustive``.
    mask_threshold : Pixels whose subspace signal is below this fraction of the bright-pixel level are left at 0
        (``matching.signal_mask``).
    index : ``matching.build_match_index(dictionary.compressed)`` for the fast search; None builds it.
    device : Where the matching runs.

    Returns
    -------
    Maps named as ``MAP_UNITS``: ``T1`` and ``T2`` in ms, ``PD`` in the arbitrary units of the data, ``MatchScore``
    in [0, 1]; each shape `(y, x)` float32, 0 outside the mask.
    """
    mask = signal_mask(torch.from_numpy(coefficients), mask_threshold).numpy()
    on_device = dictionary.to(device)
    pixels = torch.from_numpy(np.ascontiguousarray(coefficients[:, mask].T)).to(device)
    result = match_fingerprints(
        pixels, on_device.compressed, atom_norms=on_device.norms, method=search, index=index, device=device
    )
    atom = result.index.cpu()
    matched = {
        "T1": on_device.t1_ms.cpu()[atom].numpy(),
        "T2": on_device.t2_ms.cpu()[atom].numpy(),
        "PD": result.pd.abs().cpu().numpy(),
        "MatchScore": result.score.cpu().numpy(),
    }
    values = {}
    for name, pixel_values in matched.items():
        image = np.zeros(mask.shape, np.float32)
        image[mask] = pixel_values
        values[name] = image
    return SliceMaps(values=values, sds={}, units=dict(MAP_UNITS), mask=mask, converged=mask.copy(), sd_method="")


def _clock(device: torch.device) -> float:
    """Return ``time.perf_counter()`` once the device's queued work is done (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
