"""NUFFT backends on one spiral: type-2 (forward) and type-1 (adjoint) time and accuracy, against sigpy.

What it measures
----------------
One variable-density spiral (``sigpy.mri.spiral``: ``--interleaves`` interleaves for a ``--matrix``^2 grid, density
factor 1.5, 40 mT/m, 150 T/m/s, readout sampled at twice Nyquist; 102,384 samples at the defaults) and random
complex data for ``--coils`` coils: images `(coils, y, x)` for type 2, samples for type 1. Every backend present
(``NUFFT_BACKENDS`` on the CPU, and on CUDA when there is one) runs ``NufftOp`` at the same ``--eps`` over all coils
in one call; the time is the best of ``--repeats`` after one untimed call (which makes the plans, or compiles
sigpy's numba kernels), with CUDA synchronised; ``setup s`` is the constructor plus that first pair of calls.
Accuracy is the relative l2 error against finufft in double precision at eps 1e-12 on the same data. The baseline
is sigpy on the same device at the same eps (oversampling 2, Kaiser-Bessel width from eps); sigpy at its own
defaults (oversampling 1.25, width 4) is printed for reference. Everything runs in this one process.

Run it with::

    cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python bench/bench_nufft.py [--matrix 256] [--coils 8] \
        [--interleaves 24] [--eps 2e-5] [--repeats 5]
"""

import argparse
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass

import finufft
import numpy as np
import sigpy as sp
import sigpy.mri as sp_mri
import torch
from bench_common import best_of, clock, cpu_name, print_rows, relative_error

from qmri_models.recon.nufft import DEFAULT_EPS, NufftOp

FOV_M = 0.24
NUFFT_RUNS = (("finufft", "cpu"), ("sigpy", "cpu"), ("cufinufft", "cuda"), ("sigpy", "cuda"))
"""(backend, device) pairs, every one of ``NUFFT_BACKENDS`` where it runs."""


@dataclass
class NufftRow:
    """One backend's timings and accuracy; ``note`` instead when it could not run."""

    backend: str
    device: str
    setup_s: float = math.nan
    forward_s: float = math.nan
    adjoint_s: float = math.nan
    forward_error: float = math.nan
    adjoint_error: float = math.nan
    note: str = ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--interleaves", type=int, default=24, help="spiral interleaves (24: 102k samples at 256)")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS, help="requested tolerance of every backend")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args()


def spiral(matrix: int, interleaves: int) -> np.ndarray:
    """Return the spiral in cycles per field of view. Shape `(interleaves, readout, 2)`."""
    coord = sp_mri.spiral(FOV_M, matrix, 0.5, 1, interleaves, 1.5, 40e-3, 150) * FOV_M
    return coord.reshape(interleaves, -1, 2)


def nufft_reference(coord: np.ndarray, img: np.ndarray, kdata: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return type-2 of ``img`` and type-1 of ``kdata`` by finufft in double precision at eps 1e-12, unitary."""
    n_coils, ny, nx = img.shape
    points = coord.reshape(-1, 2).astype(np.float64)
    x = np.ascontiguousarray(points[:, 0] * (2 * np.pi / ny))
    y = np.ascontiguousarray(points[:, 1] * (2 * np.pi / nx))
    results = []
    for nufft_type, data in ((2, img), (1, kdata.reshape(n_coils, -1))):
        plan = finufft.Plan(nufft_type, (ny, nx), n_coils, 1e-12, -1 if nufft_type == 2 else 1, dtype="complex128")
        plan.setpts(x, y)
        results.append(plan.execute(data.astype(np.complex128)) / math.sqrt(ny * nx))
    return results[0].reshape(kdata.shape), results[1]


def missing(backend: str, device: str) -> str:
    """Return why ``backend`` cannot run on ``device`` here, or an empty string."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA"
    package = {("cufinufft", "cuda"): "cufinufft", ("sigpy", "cuda"): "cupy"}.get((backend, device), backend)
    if importlib.util.find_spec(package) is None:
        return f"{package} not installed"
    return ""


def nufft_row(backend: str, device: str, data: dict[str, np.ndarray], args: argparse.Namespace) -> NufftRow:
    note = missing(backend, device)
    if note:
        return NufftRow(backend, device, note=note)
    img, kdata = torch.from_numpy(data["img"]).to(device), torch.from_numpy(data["kdata"]).to(device)
    start = clock(device)
    op = NufftOp(data["coord"], img.shape[-2:], backend=backend, eps=args.eps, device=device)  # type: ignore[arg-type]
    forward, adjoint = op.forward(img), op.adjoint(kdata)
    setup_s = clock(device) - start
    return NufftRow(
        backend,
        device,
        setup_s=setup_s,
        forward_s=best_of(args.repeats, lambda: op.forward(img), device)[0],
        adjoint_s=best_of(args.repeats, lambda: op.adjoint(kdata), device)[0],
        forward_error=relative_error(forward.cpu().numpy(), data["ref_forward"]),
        adjoint_error=relative_error(adjoint.cpu().numpy(), data["ref_adjoint"]),
    )


def bench_sigpy_defaults(data: dict[str, np.ndarray], args: argparse.Namespace) -> NufftRow:
    """sigpy's own NUFFT defaults (oversampling 1.25, width 4) on the CPU, called directly on numpy."""
    coord, img, kdata = data["coord"].astype(np.float32), data["img"], data["kdata"]
    start = time.perf_counter()
    forward, adjoint = sp.nufft(img, coord), sp.nufft_adjoint(kdata, coord, oshape=img.shape)
    setup_s = time.perf_counter() - start
    return NufftRow(
        "sigpy (own defaults)",
        "cpu",
        setup_s=setup_s,
        forward_s=best_of(args.repeats, lambda: sp.nufft(img, coord), "cpu")[0],
        adjoint_s=best_of(args.repeats, lambda: sp.nufft_adjoint(kdata, coord, oshape=img.shape), "cpu")[0],
        forward_error=relative_error(forward, data["ref_forward"]),
        adjoint_error=relative_error(adjoint, data["ref_adjoint"]),
    )


NUFFT_HEADER = ("backend", "device", "setup s", "type-2 ms", "type-1 ms", "type-2 error", "type-1 error", "vs sigpy")
"""Columns of ``nufft_table``."""


def nufft_table(rows: list[NufftRow]) -> list[tuple[str, ...]]:
    """Return the table lines of ``rows`` under ``NUFFT_HEADER``; the last cell is the speed-up over sigpy."""
    baselines = {row.device: row for row in rows if row.backend == "sigpy" and not row.note}
    table = []
    for row in rows:
        if row.note:
            table.append((row.backend, row.device, row.note, "", "", "", "", ""))
            continue
        base = baselines.get(row.device)
        ratio = f"{base.forward_s / row.forward_s:.1f}x / {base.adjoint_s / row.adjoint_s:.1f}x" if base else "-"
        table.append(
            (
                row.backend,
                row.device,
                f"{row.setup_s:.2f}",
                f"{row.forward_s * 1e3:.1f}",
                f"{row.adjoint_s * 1e3:.1f}",
                f"{row.forward_error:.1e}",
                f"{row.adjoint_error:.1e}",
                ratio,
            )
        )
    return table


def print_table(rows: list[NufftRow], data: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    coord = data["coord"]
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} core(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f}; GPU: {gpu}; "
        f"finufft {finufft.__version__}, sigpy {sp.__version__}, torch {torch.__version__}"
    )
    print(
        f"spiral: {coord.shape[0]} interleaves x {coord.shape[1]} = {coord.shape[0] * coord.shape[1]:,} samples, "
        f"{args.matrix}x{args.matrix} grid, {args.coils} coils in one call; eps {args.eps:g}, complex64; "
        f"best of {args.repeats}; error: relative l2 against finufft complex128 at eps 1e-12"
    )
    print_rows(NUFFT_HEADER, nufft_table(rows), left=2)
    print("vs sigpy: speed-up (type 2 / type 1) over sigpy on the same device at the same eps, measured above")


def main() -> int:
    args = parse_args()
    rng = np.random.default_rng(0)
    coord = spiral(args.matrix, args.interleaves)
    img_shape = (args.coils, args.matrix, args.matrix)
    kdata_shape = (args.coils, *coord.shape[:-1])
    img = (rng.standard_normal(img_shape) + 1j * rng.standard_normal(img_shape)).astype(np.complex64)
    kdata = (rng.standard_normal(kdata_shape) + 1j * rng.standard_normal(kdata_shape)).astype(np.complex64)
    ref_forward, ref_adjoint = nufft_reference(coord, img, kdata)
    data = {"coord": coord, "img": img, "kdata": kdata, "ref_forward": ref_forward, "ref_adjoint": ref_adjoint}
    rows = [nufft_row(backend, device, data, args) for backend, device in NUFFT_RUNS]
    rows.append(bench_sigpy_defaults(data, args))
    print_table(rows, data, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
