"""Time per slice of T MC-dropout samples of the PUQ network: as batches versus T sequential passes (the paper's way).

What it measures
----------------
One simulated 8x MOLLI slice (160^2, 8 phases, 8 coils by default) through the full-size unrolled network (5
iterations, 64 hidden channels, dropout 0.3; weights untrained: the time does not depend on them). For each device
present (CPU always, CUDA when there is one) it times ``mc_sample`` with the samples in memory-sized batches and with
``batch_size=1`` (T sequential forward passes), in the same process, after one untimed warm-up pass, and prints the
time per slice, per sample and the ratio. On the CPU a full-size sample costs about a third of a second, so the CPU
default is T = 20; pass ``--samples 100`` for the paper's T. On the CPU ``mc_sample`` runs one sample per pass (the
fastest there); the batched line forces batches of 8 to show what batching costs on a CPU.

Run it with::

    .venv/bin/python bench/bench_mc_sampling.py [--samples 20] [--cuda-samples 100] [--matrix 160] [--coils 8]
"""

import argparse
import sys
import time

import torch

from qmri_models.networks.mc_sampling import mc_sample, samples_per_batch
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.simulation.scan import ScanSettings, simulate_scan


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="MC samples T on the CPU")
    parser.add_argument("--cuda-samples", type=int, default=100, help="MC samples T on CUDA")
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 for torch's default")
    return parser.parse_args()


def timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_device(device: torch.device, n_samples: int, args: argparse.Namespace) -> None:
    settings = ScanSettings(contrast="molli", matrix=args.matrix, n_coils=args.coils, acceleration=8)
    sim = simulate_scan(settings)[0]
    kdata = torch.from_numpy(sim.kdata).to(device)
    sampled = torch.from_numpy(sim.sampled).to(device)
    sens = torch.from_numpy(sim.sens).to(device)
    torch.manual_seed(0)
    network = UnrolledRecon(n_phases=kdata.shape[0]).to(device)
    per_batch = samples_per_batch(network, kdata)
    mc_sample(network, kdata, sampled, sens, n_samples=2, batch_size=2)  # warm-up: kernels, allocator
    if device.type == "cpu":
        per_batch = min(8, n_samples)  # the CPU default is 1 (fastest there); show what batching would cost
    batched_s = timed(
        lambda: mc_sample(network, kdata, sampled, sens, n_samples=n_samples, batch_size=per_batch), device
    )
    sequential_s = timed(lambda: mc_sample(network, kdata, sampled, sens, n_samples=n_samples, batch_size=1), device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}: slice {args.matrix}^2, {kdata.shape[0]} phases, {args.coils} coils, T = {n_samples}")
    print(f"  batched ({min(per_batch, n_samples)} samples per pass): {batched_s * 1e3:9.1f} ms per slice")
    print(f"  sequential (T passes, the paper's way):  {sequential_s * 1e3:9.1f} ms per slice")
    per_sample = (batched_s / n_samples * 1e3, sequential_s / n_samples * 1e3)
    print(f"  per sample {per_sample[0]:.1f} ms batched, {per_sample[1]:.1f} ms sequential")
    print(f"  sequential / batched = {sequential_s / batched_s:.2f}")


def main() -> int:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    bench_device(torch.device("cpu"), args.samples, args)
    if torch.cuda.is_available():
        bench_device(torch.device("cuda"), args.cuda_samples, args)
    else:
        print("no CUDA device: GPU line skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
