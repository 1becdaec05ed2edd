"""FISP-MRF dictionary build time with our vectorised torch EPG against blochsim's MRF simulator, and SVD energy.

What it measures
----------------
1. Dictionary build time (``build_dictionary`` with the cache off: EPG simulation of every atom, normalisation and
   the rank-5 SVD basis) of the default dictionary (default ``jiang_schedule``, 1000 frames, 17,553 atoms) and of the
   paper-sized one (``PAPER_STEP_PERCENT``, about 95,000 atoms), on ``--device``; the EPG alone
   (``fisp_fingerprints``) beside it; and loading the default dictionary back from the disk cache.
2. Baseline: ``blochsim.mrf_sim`` (PyPI, MIT; its compiled CPU kernels, or its GPU kernels on a card), same schedule and
   number of EPG orders, on the same device, over the default grid's atoms (or a random subset of
   ``--blochsim-atoms``); its time is scaled linearly to the paper-sized dictionary (marked "extrapolated"). Our EPG
   runs on the same atoms for a like-for-like ratio, and the two signals are compared (blochsim samples right after
   the pulse, so its signal is multiplied by ``exp(-TE / T2)`` first; it returns complex64).
3. Energy kept by the SVD basis at K = 3, 5, 8, 10 for both dictionaries.
4. Truncation: for four tissues, the default orders' atom is matched against untruncated atoms (orders up to the
   number of frames) on a local (T1, T2) grid of 0.5 % steps; the printed bias is how far truncation alone moves
   the matched T1 and T2.

Timings are the best of ``--repeats`` after an untimed warm-up (the 95k build and blochsim run once). The script
never fails on timings (exit code 0).

Run it with::

    cd /work/main && .venv/bin/python bench/bench_mrf_dictionary.py [--device auto] [--blochsim-atoms 0]
"""

import argparse
import importlib.metadata
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import blochsim
import numpy as np
import torch
from bench_common import best_of, print_rows, timed

from qmri_models.device import torch_device
from qmri_models.mrf.dictionary import PAPER_STEP_PERCENT, build_dictionary, t1_t2_grid
from qmri_models.mrf.epg import N_STATES, fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule, jiang_schedule
from qmri_models.mrf.subspace import svd_basis

RANKS = (3, 5, 8, 10)
TISSUES_MS = ((1000.0, 100.0), (1500.0, 300.0), (3000.0, 1000.0), (4000.0, 2000.0))
"""(T1, T2) of the truncation check, ms."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--blochsim-atoms", type=int, default=0, help="default-grid atoms blochsim simulates (then scaled); 0 for all"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of the default build; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 for torch's default")
    return parser.parse_args()


def blochsim_signal(schedule: FispSchedule, t1_ms: torch.Tensor, t2_ms: torch.Tensor) -> torch.Tensor:
    """blochsim's MRF signal of the atoms at TE (its own sample right after the pulse, decayed by exp(-TE/T2))."""
    with warnings.catch_warnings():
        # blochsim 0.0.14 converts a tensor that requires grad to a float inside its accelerator (its own warning)
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad", UserWarning)
        signal = blochsim.mrf_sim(
            torch.tensor(schedule.flip_angles_deg, device=t1_ms.device),
            torch.tensor(schedule.tr_ms, device=t1_ms.device),
            t1_ms,
            t2_ms,
            TI=schedule.ti_ms,
            states=N_STATES,
        )
    return torch.as_tensor(signal) * torch.exp(-schedule.te_ms / t2_ms)[:, None]


def truncation_bias(schedule: FispSchedule, device: torch.device) -> list[tuple[float, float, float, float, float]]:
    """Return (T1, T2, fingerprint error, matched T1 bias %, matched T2 bias %) of every tissue in ``TISSUES_MS``."""
    rows = []
    steps = 1.005 ** torch.arange(-10, 11, dtype=torch.float64, device=device)
    for t1, t2 in TISSUES_MS:
        grid_t1, grid_t2 = torch.meshgrid(t1 * steps, t2 * steps, indexing="ij")
        grid_t1, grid_t2 = grid_t1.reshape(-1), grid_t2.reshape(-1)
        exact = fisp_fingerprints(grid_t1, grid_t2, schedule, n_states=schedule.n_frames + 1)
        exact = exact / torch.linalg.vector_norm(exact, dim=-1, keepdim=True)
        centre = grid_t1.numel() // 2
        truncated = fisp_fingerprints(grid_t1[centre : centre + 1], grid_t2[centre : centre + 1], schedule)[0]
        error = float(torch.linalg.vector_norm(truncated / torch.linalg.vector_norm(truncated) - exact[centre]))
        best = int((exact.conj() @ truncated).abs().argmax())
        rows.append((t1, t2, error, 100 * (float(grid_t1[best]) / t1 - 1.0), 100 * (float(grid_t2[best]) / t2 - 1.0)))
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def main() -> int:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch_device(args.device)
    schedule = jiang_schedule()
    grid = t1_t2_grid()
    paper_grid = t1_t2_grid(PAPER_STEP_PERCENT)
    n_default, n_paper = grid[0].numel(), paper_grid[0].numel()
    print(
        f"device: {device_name(device)}; torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); "
        f"blochsim {importlib.metadata.version('blochsim')}; schedule jiang_schedule(): {schedule.n_frames} frames, "
        f"{N_STATES} EPG orders; float32"
    )

    build_s, default = best_of(
        args.repeats, lambda: build_dictionary(schedule, grid=grid, device=device, cache=False), device
    )
    t1_dev, t2_dev = grid[0].to(device, torch.float32), grid[1].to(device, torch.float32)
    epg_s, _ = best_of(args.repeats, lambda: fisp_fingerprints(t1_dev, t2_dev, schedule), device)
    with tempfile.TemporaryDirectory() as cache_dir:
        build_dictionary(schedule, grid=grid, device=device, cache_dir=Path(cache_dir))
        load_s, _ = best_of(
            args.repeats,
            lambda: build_dictionary(schedule, grid=grid, device=device, cache_dir=Path(cache_dir)),
            device,
        )
    paper_s, paper = timed(lambda: build_dictionary(schedule, grid=paper_grid, device=device, cache=False), device)

    n_blochsim = n_default if args.blochsim_atoms <= 0 else min(args.blochsim_atoms, n_default)
    subset = torch.from_numpy(np.sort(np.random.default_rng(0).choice(n_default, n_blochsim, replace=False)))
    sub_t1, sub_t2 = t1_dev[subset.to(device)], t2_dev[subset.to(device)]
    blochsim_signal(schedule.truncated(10), sub_t1[:10], sub_t2[:10])  # warm-up
    blochsim_s, theirs = timed(lambda: blochsim_signal(schedule, sub_t1, sub_t2), device)
    ours_sub_s, ours = best_of(args.repeats, lambda: fisp_fingerprints(sub_t1, sub_t2, schedule), device)
    theirs = theirs.to(ours.dtype)
    agreement = torch.linalg.vector_norm(ours - theirs, dim=-1) / torch.linalg.vector_norm(theirs, dim=-1)
    per_atom = blochsim_s / n_blochsim

    def row(what: str, atoms: int, seconds: float, note: str = "") -> tuple[str, ...]:
        return (what, f"{atoms:,}", f"{seconds:.2f}", f"{atoms / seconds:,.0f}", note)

    rows = [
        row("ours: build_dictionary (EPG + normalise + SVD)", n_default, build_s),
        row("ours: EPG alone (fisp_fingerprints)", n_default, epg_s),
        row("ours: build_dictionary, loaded from the cache", n_default, load_s),
        row("blochsim.mrf_sim", n_blochsim, blochsim_s, "measured"),
    ]
    if n_blochsim < n_default:
        rows += [
            row("ours: EPG alone (fisp_fingerprints)", n_blochsim, ours_sub_s),
            row("blochsim.mrf_sim", n_default, per_atom * n_default, "extrapolated"),
        ]
    rows += [
        row("ours: build_dictionary (EPG + normalise + SVD)", n_paper, paper_s, "one run"),
        row("blochsim.mrf_sim", n_paper, per_atom * n_paper, "extrapolated"),
    ]
    print(f"\ndictionary build time (atoms x {schedule.n_frames} frames, {N_STATES} EPG orders, on {device})")
    print_rows(("what", "atoms", "seconds", "atoms/s", "note"), rows)
    print(
        f"speed-up of our EPG over blochsim on the same {n_blochsim:,} atoms: {blochsim_s / ours_sub_s:.1f}x; "
        f"of our whole default build (SVD included) over blochsim's simulation alone: "
        f"{per_atom * n_default / build_s:.1f}x"
    )
    print(
        f"agreement with blochsim (relative L2 difference per atom, {n_blochsim:,} atoms): "
        f"median {agreement.median().item():.1e}, max {agreement.max().item():.1e}"
    )

    print("\nSVD energy kept (fraction of the dictionary's energy in the rank-K temporal subspace)")
    rows = []
    for name, dictionary in (("default", default), ("paper-sized", paper)):
        kept = [svd_basis(dictionary.fingerprints, rank)[1] for rank in RANKS]
        rows.append((f"{name} ({dictionary.n_atoms:,} atoms)", *(f"{value:.5f}" for value in kept)))
    print_rows(("dictionary", *(f"K={rank}" for rank in RANKS)), rows)
    del paper

    print(f"\ntruncation at {N_STATES} orders against untruncated atoms (local grid, 0.5 % steps in T1 and T2)")
    print_rows(
        ("T1 ms", "T2 ms", "atom difference", "matched T1 moves %", "matched T2 moves %"),
        [
            (f"{t1:.0f}", f"{t2:.0f}", f"{error:.1e}", f"{t1_bias:+.1f}", f"{t2_bias:+.1f}")
            for t1, t2, error, t1_bias, t2_bias in truncation_bias(schedule, device)
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
