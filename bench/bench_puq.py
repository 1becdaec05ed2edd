"""PUQ stage 1 (MC-dropout reconstruction): time per slice, batched versus sequential, and the T sweep (Fig. 4).

What it measures
----------------
Held-out simulated slices (``held_out_slice``: 8 coils, SNR 50, ``--acceleration``), ESPIRiT maps from their
calibration lines, the reconstruction network of ``--recon-weights`` (``t1``, ``t2`` or a weights file).

1. Time per slice of ``--samples`` MC samples through ``puq_reconstruct`` on the first slice: in batches
   (``batch_size=None``: memory-sized on CUDA, 1 on the CPU; on the CPU also a fixed batch of 8) against T sequential
   forward passes (``batch_size=1``, the paper's way), in this process, after one untimed warm-up, with CUDA
   synchronised before the clock is read. Printed: ms per slice, ms per sample, sequential / batched.
2. The T sweep: for every T of ``--sweep``, T new samples per slice through ``puq_reconstruct`` give the mean and
   the per-phase uncertainty (the error head's when the weights carry one), then the map NRMSE in the tissue of the
   unguided model-based fit of the mean (equal weights), the guided model-based fit (``phase_weights``) and the guided
   learned map (the MLP of ``--fit-weights``), and the Pearson correlation with the true error ``|mean - target|``
   (``uncertainty_error_correlation``) of the uncertainty and of the MC SD alone, averaged over ``--slices`` slices.

Run it with::

    cd /work/main && .venv/bin/python bench/bench_puq.py [--map t1] [--acceleration 8] [--matrix 160] \
        [--samples 100] [--sweep 10 20 50 100] [--slices 2] [--device auto] [--recon-weights t1] [--fit-weights t1]
"""

import argparse
import sys
import time
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from qmri_models.device import torch_device
from qmri_models.fitting.guided import learned_map, phase_weights
from qmri_models.fitting.maps import fit_maps, signal_mask
from qmri_models.metrics import nrmse
from qmri_models.networks.fit_mlp import FitMlp
from qmri_models.networks.mc_sampling import samples_per_batch
from qmri_models.networks.puq_recon import puq_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.pretrained import MapName, load_fit_mlp, load_recon_network
from qmri_models.puq_evaluation import combined_truth, held_out_slice, model_and_times, uncertainty_error_correlation
from qmri_models.recon.cartesian import calibration_lines, phase_sensitivities
from qmri_models.simulation.scan import SimulatedSlice

SWEEP_COLUMNS = (
    "T",
    "NRMSE w/o G (model)",
    "NRMSE guided (model)",
    "NRMSE guided (learned)",
    "r uncertainty/error",
    "r MC SD/error",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", choices=("t1", "t2"), default="t1")
    parser.add_argument("--acceleration", type=int, default=8)
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument("--samples", type=int, default=100, help="MC samples T of the timing")
    parser.add_argument("--sweep", type=int, nargs="+", default=[10, 20, 50, 100], help="T values of the sweep")
    parser.add_argument("--slices", type=int, default=2, help="held-out slices the sweep averages over")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--recon-weights", default=None, help="t1, t2 or a weights file (default: --map)")
    parser.add_argument("--fit-weights", default=None, help="t1, t2 or a fit weights file (default: --map)")
    return parser.parse_args()


def clock(device: torch.device) -> float:
    """Return ``time.perf_counter()`` once the device's queued work is done (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Return the wall time of ``run()`` in seconds."""
    start = clock(device)
    run()
    return clock(device) - start


def bench_timing(network: UnrolledRecon, simulated: SimulatedSlice, sens: np.ndarray, args: argparse.Namespace) -> None:
    """Print the time per slice of T samples in batches and as T sequential passes."""
    device, n = args.device, args.samples
    kdata, sampled = simulated.kdata, simulated.sampled

    def run(batch_size: int | None) -> Callable[[], object]:
        return lambda: puq_reconstruct(network, kdata, sampled, sens, n_samples=n, device=device, batch_size=batch_size)

    puq_reconstruct(network, kdata, sampled, sens, n_samples=2, device=device, batch_size=2)  # warm-up
    auto = samples_per_batch(network, torch.as_tensor(kdata, device=device))
    batch_sizes: list[int | None] = [None] + ([8] if device.type == "cpu" else [])
    batched = {size: timed(run(size), device) for size in batch_sizes}
    sequential = timed(run(1), device)
    print(f"time per slice, T = {n}")
    for size, seconds in batched.items():
        label = f"batched (auto: {min(auto, n)} per pass)" if size is None else f"batched ({min(size, n)} per pass)"
        print(
            f"  {label:<28} {seconds * 1e3:10.1f} ms  {seconds / n * 1e3:8.1f} ms/sample  "
            f"sequential / batched = {sequential / seconds:.2f}"
        )
    print(f"  {'sequential (T passes)':<28} {sequential * 1e3:10.1f} ms  {sequential / n * 1e3:8.1f} ms/sample")


def sweep_slice(
    network: UnrolledRecon, mlp: FitMlp, simulated: SimulatedSlice, sens: np.ndarray, args: argparse.Namespace
) -> np.ndarray:
    """Return one row per T of the sweep: three map NRMSEs and the uncertainty-error and MC SD-error correlations."""
    map_name = cast("MapName", args.map)
    model, times = model_and_times(map_name)
    tissue = simulated.truth.labels > 0
    truth = simulated.truth.t1_ms if map_name == "t1" else simulated.truth.t2_ms
    target = combined_truth(simulated, sens)
    rows = []
    for n in args.sweep:
        estimate = puq_reconstruct(network, simulated.kdata, simulated.sampled, sens, n_samples=n, device=args.device)
        mean, sd = estimate.mean.cpu().numpy(), estimate.uncertainty.cpu().numpy()
        error = np.abs(mean - target)
        mask = signal_mask(mean, 0.08)
        unguided, guided = (
            fit_maps(model, mean, times, mask=mask, weights=w, device=args.device).values[model.primary_map]
            for w in (None, phase_weights(mean, sd))
        )
        learned = learned_map(mlp, mean, sd, mask, device=args.device)
        rows.append(
            [nrmse(values, truth, tissue) for values in (unguided, guided, learned)]
            + [uncertainty_error_correlation(u, error, tissue) for u in (sd, estimate.sd.cpu().numpy())]
        )
    return np.asarray(rows)


def main() -> int:
    args = parse_args()
    args.device = torch_device(args.device)
    if min(args.sweep) < 2:
        raise SystemExit("every T of --sweep must be at least 2")
    network = load_recon_network(args.recon_weights or args.map).to(args.device)
    mlp = load_fit_mlp(args.fit_weights or args.map, guided=True)
    slices = [
        held_out_slice(cast("MapName", args.map), args.acceleration, i, matrix=args.matrix) for i in range(args.slices)
    ]
    sens = [phase_sensitivities(s.kdata, calibration_lines(s.sampled)) for s in slices]
    device = args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    n_phases, n_coils = slices[0].kdata.shape[:2]
    print(f"device: {name}")
    print(
        f"{args.map} slice {args.matrix}^2, {n_phases} phases, {n_coils} coils, {args.acceleration}x; "
        f"sweep over {args.slices} slice(s)"
    )
    bench_timing(network, slices[0], sens[0], args)
    torch.manual_seed(0)  # the same dropout masks from run to run
    table = np.mean([sweep_slice(network, mlp, s, c, args) for s, c in zip(slices, sens, strict=True)], axis=0)
    print(f"T sweep ({args.map} map NRMSE in tissue, mean over slices)")
    widths = [len(column) for column in SWEEP_COLUMNS]
    print("  " + " | ".join(SWEEP_COLUMNS))
    for n, row in zip(args.sweep, table, strict=True):
        cells = [str(n), *(f"{value:.4f}" for value in row[:3]), *(f"{value:.3f}" for value in row[3:])]
        print("  " + " | ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
