"""Spiral MRF on one simulated slice: NUFFT backends, dictionary build, streaming subspace recon, matching.

What it measures
----------------
Everything runs in this one process on the same simulated slice (``MrfScanSettings`` defaults: 256^2, 8 coils, 48
interleaves x 2101 samples = 100,848 samples, the first 200 of 1000 FISP frames, one interleaf per frame).

1. Device: CPU, threads, GPU and library versions.
2. Data: the slice's sizes and its simulation time.
3. NUFFT on the slice's trajectory (its distinct interleaves, 100,848 samples), 8 coils in one call: type 2 on the
   object's coil images (``sens * pd * exp(i phase)``), type 1 on the readouts of the first frame of every
   interleaf. Every backend present (finufft and sigpy on the CPU; cufinufft and sigpy with cupy on CUDA), at
   ``--eps``; the time is the best of ``--repeats`` after one untimed call (which makes the plans or compiles sigpy's
   kernels), CUDA synchronised; ``setup s`` is the constructor and that first pair of calls. Error: relative l2
   against finufft in complex128 at eps 1e-12. Baseline: sigpy on the same device at the same eps.
4. Dictionary: ``build_dictionary`` with the cache off (EPG, normalisation, rank-5 SVD) of the acquired schedule on
   the default grid (17,553 atoms) and, with ``--paper-dictionary``, the ``PAPER_STEP_PERCENT`` grid (95,333 atoms);
   one timed run each after an untimed build of a small grid.
5. Streaming reconstruction, the gadget's path (``qmri_models.mrf.recipe``, which ``MrfReconGadget`` runs): every
   readout, with its trajectory in the ISMRMRD ``traj`` layout, goes into the recipe's ``SubspaceAccumulator`` one
   at a time. The state's ``nbytes`` is set against the raw frames, the K
   coil images and the previous design's K projected copies of the trajectory's k-space; the peak memory of
   accumulation comes from the process's resident set (``/proc/self/statm``, sampled every millisecond by a thread
   during the first, timed pass: everything, torch's tensors and the NUFFT's plans included; memory the simulation
   freed and the allocator kept is reused unseen, so it is a lower bound) and from ``tracemalloc`` (numpy's buffers
   only, in a second pass). Then ``MrfRecipe.reconstruct`` of the accumulated slice, one run each as a slice costs
   in the gadget, with the steps it times: the default ``low_rank_admm`` (``SubspaceGridding``: NUFFT, density
   compensation; ESPIRiT sensitivities from the data; ``low_rank_cg`` with ``--iterations``, ``--regularisation``,
   weighted by the dictionary's component energy; ``dictionary_admm`` from it, ``--admm-rounds``, clustered
   matching in every round), its match index built once per scan when the recipe is made, and ``svdmrf``.
6. Maps, the gadget's path: ``recipe.match_maps`` of the ADMM coefficient images (the pixels above the mask, fast
   search; the index built once per dictionary, timed apart), with the T1 and T2 error against the truth in the
   tissue it matched.
7. Matching: all 65,536 pixels of the ADMM coefficient images (background included) against each dictionary's
   atoms in the reconstruction's subspace. Exhaustive search (one run), clustered search (best of ``--repeats``;
   its index build timed apart), their agreement (same atom; same atom or a score tie within 1e-6) and the
   speed-up; T1 and T2 error against the truth in the tissue.

A markdown summary of the key numbers closes the output. The script never fails on timings (exit code 0).

Run it with::

    cd /work/main && .venv/bin/python bench/bench_mrf.py [--matrix 256] [--device auto] [--paper-dictionary]
"""

import argparse
import gc
import importlib.metadata
import importlib.util
import os
import sys
import threading
import tracemalloc
from dataclasses import replace
from functools import partial
from pathlib import Path

import finufft
import numpy as np
import sigpy as sp
import torch
from bench_common import best_of, cpu_name, print_rows, timed
from bench_nufft import NUFFT_HEADER, NUFFT_RUNS, nufft_reference, nufft_row, nufft_table

from qmri_models.device import torch_device
from qmri_models.mrf.dictionary import (
    DEFAULT_STEP_PERCENT,
    PAPER_STEP_PERCENT,
    MrfDictionary,
    build_dictionary,
    t1_t2_grid,
)
from qmri_models.mrf.matching import (
    MASK_THRESHOLD,
    build_match_index,
    match_fingerprints,
    signal_mask,
)
from qmri_models.mrf.recipe import MrfRecipe, MrfReconOptions, match_maps
from qmri_models.mrf.subspace import DEFAULT_RANK, to_subspace
from qmri_models.mrf.subspace_accumulator import SubspaceAccumulator
from qmri_models.mrf.subspace_algorithms import DEFAULT_ADMM_ROUNDS, DEFAULT_CG_ITERATIONS, DEFAULT_REGULARISATION
from qmri_models.recon.nufft import DEFAULT_EPS
from qmri_models.simulation.mrf_scan import MrfScanSettings, SimulatedMrfSlice, simulate_mrf_scan
from qmri_models.simulation.spiral import coord_from_ismrmrd_traj, ismrmrd_traj

RANK = DEFAULT_RANK
TIE = 1e-6
MB = 1e6

Summary = list[tuple[str, str, str, str]]
"""Rows of the closing table: (step, size, time, note)."""
STEPS = ("gridding", "sensitivities", "low_rank_cg", "dictionary_admm")
"""The steps ``MrfRecipe.reconstruct`` times for ``low_rank_admm``."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=256, help="image size; the spiral is designed for it")
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS, help="requested tolerance of every NUFFT backend")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the NUFFTs and the fast search")
    parser.add_argument("--iterations", type=int, default=DEFAULT_CG_ITERATIONS, help="low_rank_cg iterations")
    parser.add_argument(
        "--regularisation", type=float, default=DEFAULT_REGULARISATION, help="prior weight of low_rank_cg and ADMM"
    )
    parser.add_argument("--admm-rounds", type=int, default=DEFAULT_ADMM_ROUNDS, help="dictionary_admm rounds")
    parser.add_argument("--device", default="auto", help="dictionary, reconstruction and matching: auto, cpu, cuda")
    parser.add_argument("--paper-dictionary", action="store_true", help="also build and match the 95k-atom one")
    return parser.parse_args()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_device(device: torch.device) -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} core(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"torch {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.1f}; GPU: {gpu}"
    )
    print(
        f"torch {torch.__version__}, finufft {finufft.__version__}, sigpy {sp.__version__}, "
        f"cufinufft {version('cufinufft')}, cupy {version('cupy-cuda12x')}; numpy {np.__version__}; "
        f"dictionary, reconstruction and matching on {device}"
    )


def simulate(args: argparse.Namespace, summary: Summary) -> tuple[MrfScanSettings, SimulatedMrfSlice]:
    settings = MrfScanSettings(matrix=args.matrix, n_coils=args.coils)
    seconds, slices = timed(lambda: simulate_mrf_scan(settings), torch.device("cpu"))
    scan = slices[0]
    n_frames, n_coils, n_samples = scan.readouts.shape
    n_interleaves = np.unique(scan.rotations.angle_rad).size
    size = (
        f"{settings.matrix}x{settings.matrix}, {n_coils} coils, {n_interleaves} interleaves x {n_samples} = "
        f"{n_interleaves * n_samples:,} samples"
    )
    print(f"\n## Data: one simulated slice (MrfScanSettings defaults but --matrix/--coils), {seconds:.1f} s")
    print(
        f"{size}; {n_frames} of {settings.n_frames_full} frames acquired, one interleaf each ({settings.ordering} "
        f"order); SNR {settings.snr:g}; {int((scan.truth.labels > 0).sum()):,} tissue pixels; readouts "
        f"{n_frames} x {n_coils} x {n_samples} complex64 = {scan.readouts.nbytes / MB:.1f} MB"
    )
    summary.append(("simulated slice", size + f", {n_frames} frames", f"{seconds:.1f} s", "not part of the recon"))
    return settings, scan


def bench_nufft(scan: SimulatedMrfSlice, args: argparse.Namespace, summary: Summary) -> None:
    first = np.unique(scan.rotations.angle_rad, return_index=True)[1]
    coord = scan.coord[first]
    kdata = np.ascontiguousarray(scan.readouts[first].transpose(1, 0, 2))
    img = (scan.sens * (scan.truth.pd * np.exp(1j * scan.phase_rad))).astype(np.complex64)
    ref_forward, ref_adjoint = nufft_reference(coord, img, kdata)
    data = {"coord": coord, "img": img, "kdata": kdata, "ref_forward": ref_forward, "ref_adjoint": ref_adjoint}
    rows = [nufft_row(backend, device, data, args) for backend, device in NUFFT_RUNS]
    n_samples = coord.shape[0] * coord.shape[1]
    print(
        f"\n## NUFFT: the slice's trajectory, {coord.shape[0]} interleaves x {coord.shape[1]} = {n_samples:,} samples"
    )
    print(
        f"{img.shape[0]} coils in one call; type 2 on the object's coil images, type 1 on the first readout of every "
        f"interleaf; eps {args.eps:g}, complex64; best of {args.repeats}; error: relative l2 against finufft "
        "complex128 at eps 1e-12"
    )
    table = nufft_table(rows)
    for row, line in zip(rows, table, strict=True):
        if row.note:
            continue
        summary.append(
            (
                f"NUFFT type 2 / type 1, {row.backend} ({row.device})",
                f"{img.shape[0]} coils x {n_samples:,} samples",
                f"{row.forward_s * 1e3:.0f} / {row.adjoint_s * 1e3:.0f} ms",
                f"error {row.forward_error:.1e} / {row.adjoint_error:.1e}; {line[-1]} vs sigpy",
            )
        )
    print_rows(NUFFT_HEADER, table, left=2)
    print("vs sigpy: speed-up (type 2 / type 1) over sigpy on the same device at the same eps, measured above")


def build_dictionaries(
    settings: MrfScanSettings, args: argparse.Namespace, device: torch.device, summary: Summary
) -> list[MrfDictionary]:
    """Return the dictionaries built: default grid, then the paper-sized one with ``--paper-dictionary``."""
    schedule = settings.schedule
    build_dictionary(schedule, grid=t1_t2_grid(50.0), rank=RANK, device=device, cache=False)  # warm-up
    steps = [DEFAULT_STEP_PERCENT, PAPER_STEP_PERCENT] if args.paper_dictionary else [DEFAULT_STEP_PERCENT]
    built, rows = [], []
    for step in steps:
        grid = t1_t2_grid(step)
        seconds, dictionary = timed(
            lambda grid=grid: build_dictionary(schedule, grid=grid, rank=RANK, device=device, cache=False), device
        )
        built.append(dictionary)
        rows.append(
            (
                f"{step:g} %",
                f"{dictionary.n_atoms:,}",
                f"{schedule.n_frames}",
                f"{seconds:.2f}",
                f"{dictionary.n_atoms / seconds:,.0f}",
                f"{dictionary.energy_kept:.5f}",
            )
        )
        summary.append(
            (
                "dictionary build (EPG + SVD, no cache)",
                f"{dictionary.n_atoms:,} atoms x {schedule.n_frames} frames",
                f"{seconds:.2f} s",
                f"rank {RANK} keeps {dictionary.energy_kept:.4f} of the energy",
            )
        )
    print(f"\n## Dictionary: build_dictionary(acquired schedule, cache=False) on {device}, one run each")
    print_rows(("grid step", "atoms", "frames", "build s", "atoms/s", f"energy kept, K={RANK}"), rows)
    return built


def feed(accumulator: SubspaceAccumulator, traj: np.ndarray, readouts: np.ndarray, matrix: int) -> None:
    """Add every readout in turn, as ``MrfReconGadget`` does with each acquisition's ``traj`` and ``data``."""
    for frame in range(len(readouts)):
        accumulator.add(frame, coord_from_ismrmrd_traj(traj[frame], matrix), readouts[frame])


def rss_bytes() -> int:
    """Return the process's resident set size now, in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the resident set size every millisecond in a thread while the ``with`` block runs."""

    def __enter__(self) -> "PeakRss":
        self.before = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_bytes()
        self.peak = max(self.peak, self.after)


def streaming_recon(
    settings: MrfScanSettings,
    scan: SimulatedMrfSlice,
    recipe: MrfRecipe,
    summary: Summary,
) -> torch.Tensor:
    """Accumulate the slice readout by readout, report memory and times, and return the ADMM coefficient images."""
    n_frames, n_coils, n_samples = scan.readouts.shape
    matrix = scan.sens.shape[-1]
    image_shape = (matrix, matrix)
    traj = ismrmrd_traj(scan.coord, matrix)

    def new_accumulator() -> SubspaceAccumulator:
        return recipe.accumulator(n_coils=n_coils, n_samples=n_samples, image_shape=image_shape)

    with PeakRss() as rss:
        accumulator = new_accumulator()
        feed_s, _ = timed(lambda: feed(accumulator, traj, scan.readouts, matrix), torch.device("cpu"))
    del accumulator
    gc.collect()
    tracemalloc.start()
    accumulator = new_accumulator()
    feed(accumulator, traj, scan.readouts, matrix)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    kspace = accumulator.result()
    result_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    rank, n_slots, full_frames = recipe.basis.shape[1], accumulator.n_slots, settings.n_frames_full
    state, raw = accumulator.nbytes, n_frames * n_coils * n_samples * 8
    coil_images = rank * n_coils * matrix * matrix * 8
    projected = rank * n_coils * n_slots * n_samples * 8
    print(f"\n## Streaming reconstruction: {n_frames} readouts, one at a time, into a SubspaceAccumulator (K={rank})")
    memory = [
        ("accumulator state (nbytes: K coil images, buffer, per-slot trajectory, weights, Gram, centre z_j)", state),
        (f"K coil images ({rank} x {n_coils} x {matrix} x {matrix} x 8)", coil_images),
        (f"raw frames ({n_frames} x {n_coils} coils x {n_samples} samples x 8)", raw),
        (f"raw frames of the full schedule ({full_frames} frames)", raw * full_frames // n_frames),
        (f"K projected copies of the trajectory (the previous state: K x coils x {n_slots} slots)", projected),
        ("resident set: growth over the accumulation, held at its end", rss.after - rss.before),
        ("resident set: peak growth during the accumulation", rss.peak - rss.before),
        ("tracemalloc: numpy memory held after accumulation", held),
        ("tracemalloc: numpy peak during accumulation", peak),
        ("tracemalloc: numpy peak of result() (the last batch, the calibration stacked)", result_peak),
    ]
    print_rows(("memory", "MB", "vs state"), [(w, f"{b / MB:.1f}", f"{b / state:.2f}x") for w, b in memory])
    print(f"the state does not grow with the frames: {state / coil_images:.2f}x the K coil images")

    recon = recipe.reconstruct(kspace, image_shape)
    gridding_s, sens_s, cg_s, admm_s = (recon.steps_s[step] for step in STEPS)
    svdmrf_recipe = MrfRecipe(recipe.dictionary, replace(recipe.options, method="svdmrf"), device=recipe.device)
    svdmrf_s = sum(svdmrf_recipe.reconstruct(kspace, image_shape).steps_s.values())
    slice_s = feed_s + sum(recon.steps_s.values())
    options = recipe.options
    steps = [
        ("accumulation, per readout (no tracing)", f"{1e3 * feed_s / n_frames:.2f} ms", f"{feed_s:.2f} s in all"),
        ("SubspaceGridding (NUFFT operator, density compensation)", f"{gridding_s:.2f} s", ""),
        ("ESPIRiT sensitivities from the data (CPU)", f"{sens_s:.2f} s", ""),
        (
            f"low_rank_cg, {options.iterations} iterations, regularisation {options.regularisation:g}",
            f"{cg_s:.2f} s",
            f"{1e3 * cg_s / options.iterations:.0f} ms per iteration; the first makes the NUFFT plans",
        ),
        (
            f"dictionary_admm, {options.admm_rounds} rounds",
            f"{admm_s:.2f} s",
            f"{admm_s / options.admm_rounds:.2f} s per round",
        ),
        ("slice, low_rank_admm: accumulation + gridding + sensitivities + CG + ADMM", f"{slice_s:.2f} s", ""),
        ("slice, svdmrf (the recipe's steps after accumulation)", f"{svdmrf_s:.2f} s", "gridding + sensitivities"),
    ]
    print(f"MrfRecipe.reconstruct on {recipe.device}, {options.nufft_backend} NUFFT backend, one run each:")
    print_rows(("step", "time", "note"), steps)
    summary += [
        ("streaming accumulation", f"{n_frames} readouts", f"{1e3 * feed_s / n_frames:.2f} ms/readout", ""),
        (
            "accumulator state vs K coil images vs raw frames",
            f"K={rank}, {n_slots} slots",
            "",
            f"{state / MB:.1f} vs {coil_images / MB:.1f} vs {raw / MB:.1f} MB; resident set peak growth "
            f"{(rss.peak - rss.before) / MB:.1f} MB",
        ),
        ("gridding + sensitivities", f"{matrix}x{matrix}, {n_coils} coils", f"{gridding_s + sens_s:.2f} s", ""),
        ("SVDMRF slice (gridding + sensitivities + adjoint)", f"K={rank}", f"{svdmrf_s:.2f} s", ""),
        ("low_rank_cg", f"{options.iterations} iterations", f"{cg_s:.2f} s", f"reg {options.regularisation:g}"),
        ("dictionary_admm", f"{options.admm_rounds} rounds", f"{admm_s:.2f} s", ""),
        ("slice reconstruction", "accumulation + gridding + sensitivities + CG + ADMM", f"{slice_s:.2f} s", ""),
    ]
    return recon.coefficients


def recipe_maps(
    coefficients: torch.Tensor,
    dictionary: MrfDictionary,
    scan: SimulatedMrfSlice,
    device: torch.device,
    summary: Summary,
) -> None:
    """Match the slice as ``MrfMatchGadget`` does (``match_maps``: the pixels above the mask, fast search)."""
    index_s, index = timed(lambda: build_match_index(dictionary.compressed.to(device)), device)
    maps_s, maps = timed(lambda: match_maps(coefficients.cpu().numpy(), dictionary, index=index, device=device), device)
    tissue = (scan.truth.labels > 0) & maps.mask
    t1_error = np.median(np.abs(maps.values["T1"][tissue] / scan.truth.t1_ms[tissue] - 1))
    t2_error = np.median(np.abs(maps.values["T2"][tissue] / scan.truth.t2_ms[tissue] - 1))
    matched = int(maps.mask.sum())
    print(
        f"\n## Maps: match_maps of the ADMM coefficient images, the gadget's path, on {device}: {matched:,} pixels "
        f"above the mask against {dictionary.n_atoms:,} atoms in {maps_s:.2f} s (+ {index_s:.2f} s index build, once "
        f"per dictionary); T1 / T2 median error in the {int(tissue.sum()):,} tissue pixels matched "
        f"{100 * t1_error:.1f} / {100 * t2_error:.1f} %"
    )
    summary.append(
        (
            "maps (match_maps, fast search; + index build)",
            f"{matched:,} pixels x {dictionary.n_atoms:,} atoms",
            f"{maps_s:.2f} s (+ {index_s:.2f} s)",
            f"T1 / T2 error {100 * t1_error:.1f} / {100 * t2_error:.1f} % in the tissue",
        )
    )


def match_slice(
    coefficients: torch.Tensor,
    dictionaries: list[MrfDictionary],
    scan: SimulatedMrfSlice,
    args: argparse.Namespace,
    device: torch.device,
    summary: Summary,
) -> None:
    """Match every pixel of the coefficient images against each dictionary, exhaustive and clustered."""
    rank = coefficients.shape[0]
    pixels = coefficients.reshape(rank, -1).T.contiguous().to(device)
    masked = int(signal_mask(coefficients, MASK_THRESHOLD).sum())
    tissue = (scan.truth.labels > 0).ravel()
    basis = dictionaries[0].basis.to(device)
    rows = []
    for dictionary in dictionaries:
        atoms = to_subspace(dictionary.fingerprints.to(device), basis)
        norms = dictionary.norms.to(device)
        index_s, index = best_of(args.repeats, partial(build_match_index, atoms), device)
        match = partial(match_fingerprints, pixels, atoms, atom_norms=norms)
        exhaustive_s, exhaustive = timed(partial(match, method="exhaustive"), device)
        fast_s, fast = best_of(args.repeats, partial(match, method="fast", index=index), device)
        same_atom = fast.index == exhaustive.index
        same = float(same_atom.float().mean())
        same_or_tie = float((same_atom | ((fast.score - exhaustive.score).abs() <= TIE)).float().mean())
        atom = exhaustive.index.cpu().numpy()[tissue]
        t1_error = np.median(np.abs(dictionary.t1_ms.cpu().numpy()[atom] / scan.truth.t1_ms.ravel()[tissue] - 1))
        t2_error = np.median(np.abs(dictionary.t2_ms.cpu().numpy()[atom] / scan.truth.t2_ms.ravel()[tissue] - 1))
        rows.append(
            (
                f"{dictionary.n_atoms:,}",
                f"{exhaustive_s:.2f}",
                f"{index_s:.2f}",
                f"{fast_s:.3f}",
                f"{exhaustive_s / fast_s:.0f}x",
                f"{100 * same:.2f} %",
                f"{100 * same_or_tie:.3f} %",
                f"{100 * t1_error:.1f} / {100 * t2_error:.1f} %",
            )
        )
        summary.append(
            (
                "matching, exhaustive / fast (+ index build)",
                f"{pixels.shape[0]:,} pixels x {dictionary.n_atoms:,} atoms",
                f"{exhaustive_s:.2f} / {fast_s:.2f} s (+ {index_s:.2f} s)",
                f"{exhaustive_s / fast_s:.0f}x; same atom {100 * same:.2f} %",
            )
        )
    print(
        f"\n## Matching: all {pixels.shape[0]:,} pixels of the ADMM coefficient images (background included; the "
        f"gadget's mask keeps {masked:,}), K={rank}, on {device}"
    )
    print(
        f"exhaustive: one run; index build and fast search: best of {args.repeats}; atoms projected on the "
        "reconstruction's basis; T1 / T2 error: median relative error of the exhaustive match in the tissue"
    )
    header = ("atoms", "exhaustive s", "index s", "fast s", "speed-up", "same atom", "same or tie", "T1 / T2 error")
    print_rows(header, rows)


def print_summary(summary: Summary) -> None:
    print("\n## Summary (markdown)\n")
    print("| step | size | time | note |")
    print("|---|---|---|---|")
    for row in summary:
        print("| " + " | ".join(row) + " |")


def main() -> int:
    args = parse_args()
    device = torch_device(args.device)
    summary: Summary = []
    print_device(device)
    settings, scan = simulate(args, summary)
    bench_nufft(scan, args, summary)
    dictionaries = build_dictionaries(settings, args, device, summary)
    options = MrfReconOptions(
        iterations=args.iterations, admm_rounds=args.admm_rounds, regularisation=args.regularisation
    )
    index_s, recipe = timed(lambda: MrfRecipe(dictionaries[0], options, device=device), device)
    summary.append(("recipe (compressed atoms, ADMM match index)", "once per scan", f"{index_s:.2f} s", ""))
    coefficients = streaming_recon(settings, scan, recipe, summary)
    recipe_maps(coefficients, dictionaries[0], scan, device, summary)
    match_slice(coefficients, dictionaries, scan, args, device, summary)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
