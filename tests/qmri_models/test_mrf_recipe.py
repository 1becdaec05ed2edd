"""The MRF recipe the gadgets run and the bench measures: its steps against their hand composition, the maps."""

import numpy as np
import pytest
import torch

from qmri_models.mrf.dictionary import MrfDictionary, build_dictionary, t1_t2_grid
from qmri_models.mrf.matching import build_match_index
from qmri_models.mrf.recipe import MAP_UNITS, MrfRecipe, MrfReconOptions, match_maps, mrf_dictionary
from qmri_models.mrf.subspace_accumulator import SubspaceAccumulator
from qmri_models.mrf.subspace_algorithms import component_energy, dictionary_admm, low_rank_cg, svdmrf
from qmri_models.mrf.subspace_calibration import subspace_sensitivities
from qmri_models.mrf.subspace_operator import SubspaceGridding, SubspaceOperator
from qmri_models.simulation.mrf_scan import MrfScanSettings, SimulatedMrfSlice, simulate_mrf_scan

CPU = torch.device("cpu")
SETTINGS = MrfScanSettings(matrix=32, n_coils=2, n_frames_full=100, truncation=5, n_interleaves=8, seed=3)
"""20 frames of a 32^2 spiral scan with 2 coils: small enough for the suite; the maps are scored by the chain test."""
SHAPE = (SETTINGS.matrix, SETTINGS.matrix)


@pytest.fixture(scope="module")
def scan() -> SimulatedMrfSlice:
    return simulate_mrf_scan(SETTINGS)[0]


@pytest.fixture(scope="module")
def dictionary() -> MrfDictionary:
    return build_dictionary(SETTINGS.schedule, grid=t1_t2_grid(20.0), rank=3, device=CPU, cache=False)


def _by_hand(scan: SimulatedMrfSlice, dictionary: MrfDictionary, options: MrfReconOptions) -> torch.Tensor:
    """The steps the recipe chains (svdmrf or low_rank_admm), called one by one as the gadget called them before."""
    accumulator = SubspaceAccumulator(
        dictionary.basis.numpy(), n_coils=SETTINGS.n_coils, n_samples=scan.readouts.shape[-1], image_shape=SHAPE
    )
    for frame, (coord, readout) in enumerate(zip(scan.coord, scan.readouts, strict=True)):
        accumulator.add(frame, coord, readout)
    kspace = accumulator.result()
    gridding = SubspaceGridding(kspace, SHAPE, device=CPU)
    operator = SubspaceOperator(gridding, kspace, subspace_sensitivities(gridding, kspace))
    if options.method == "svdmrf":
        return svdmrf(operator, kspace)
    energy = component_energy(dictionary.compressed)
    start = low_rank_cg(
        operator, kspace, iterations=options.iterations, regularisation=options.regularisation, energy=energy
    )
    atoms = dictionary.compressed
    return dictionary_admm(
        operator,
        kspace,
        start,
        atoms,
        index=build_match_index(atoms),
        rounds=options.admm_rounds,
        regularisation=options.regularisation,
        energy=energy,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "steps"),
    [
        ("svdmrf", ["gridding", "sensitivities", "svdmrf"]),
        ("low_rank_admm", ["gridding", "sensitivities", "low_rank_cg", "dictionary_admm"]),
    ],
)
def test_recipe_streamed_and_at_once_is_its_steps_by_hand(
    scan: SimulatedMrfSlice, dictionary: MrfDictionary, method: str, steps: list[str]
) -> None:
    options = MrfReconOptions(method=method, iterations=6, admm_rounds=2)  # type: ignore[arg-type]
    recipe = MrfRecipe(dictionary, options, device=CPU)
    accumulator = recipe.accumulator(n_coils=SETTINGS.n_coils, n_samples=scan.readouts.shape[-1], image_shape=SHAPE)
    for frame in range(len(scan.readouts)):  # as the gadget: one readout at a time
        accumulator.add(frame, scan.coord[frame], scan.readouts[frame])
    streamed = recipe.reconstruct(accumulator.result(), SHAPE)
    at_once = recipe.reconstruct_readouts(range(len(scan.readouts)), scan.coord, scan.readouts, SHAPE)
    expected = _by_hand(scan, dictionary, options).numpy()
    for recon in (streamed, at_once):
        assert list(recon.steps_s) == steps
        assert all(seconds >= 0 for seconds in recon.steps_s.values())
        assert recon.coefficients.shape == (3, *SHAPE)
        np.testing.assert_allclose(recon.coefficients.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_match_maps_reads_t1_t2_and_pd_of_atoms_back(dictionary: MrfDictionary) -> None:
    """Pixels that are atoms, scaled by PD and phased: both searches return their T1, T2 and PD; 0 outside."""
    rng = np.random.default_rng(0)
    picks = rng.choice(dictionary.n_atoms, size=(8, 8))
    pd = rng.uniform(0.5, 2.0, (8, 8))
    phase = np.exp(1j * rng.uniform(-np.pi, np.pi, (8, 8)))
    compressed = dictionary.compressed.numpy()
    coefficients = np.zeros((3, 12, 12), np.complex64)
    coefficients[:, 2:10, 2:10] = (
        compressed[picks] * (pd * phase * dictionary.norms.numpy()[picks])[..., None]
    ).transpose(2, 0, 1)
    inside = np.zeros((12, 12), bool)
    inside[2:10, 2:10] = True
    for search in ("fast", "exhaustive"):
        maps = match_maps(coefficients, dictionary, search=search, device=CPU)  # type: ignore[arg-type]
        assert maps.units == MAP_UNITS
        np.testing.assert_array_equal(maps.mask, inside)
        np.testing.assert_allclose(maps.values["T1"][2:10, 2:10], dictionary.t1_ms.numpy()[picks], rtol=1e-6)
        np.testing.assert_allclose(maps.values["T2"][2:10, 2:10], dictionary.t2_ms.numpy()[picks], rtol=1e-6)
        np.testing.assert_allclose(maps.values["PD"][2:10, 2:10], pd, rtol=1e-4)
        np.testing.assert_allclose(maps.values["MatchScore"][2:10, 2:10], 1.0, atol=1e-4)
        for values in maps.values.values():
            assert not values[~inside].any()


def test_options_and_dictionary_limits_name_the_bad_value() -> None:
    for field, value, message in (
        ("method", "gridding", "method must be one of"),
        ("iterations", 0, "iterations must be at least 1"),
        ("admm_rounds", 0, "admm_rounds must be at least 1"),
        ("regularisation", -1.0, "regularisation must be non-negative"),
    ):
        with pytest.raises(ValueError, match=message):
            MrfReconOptions(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"atoms x 20 frames of the schedule = .* more than 1e\+03"):
        mrf_dictionary(SETTINGS.schedule, step_percent=20.0, device=CPU, max_entries=1000, cache=False)
