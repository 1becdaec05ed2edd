"""What every benchmark script needs: wall-clock timing that waits for CUDA, the CPU's name, plain tables.

The scripts run as ``python bench/<script>.py``, so this folder is on the import path and they import it by name.
"""

import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def clock(device: torch.device | str) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA synchronised)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed(run: Callable[[], T], device: torch.device | str) -> tuple[float, T]:
    """Wall time of one run (synchronised on CUDA) and its result."""
    start = clock(device)
    result = run()
    return clock(device) - start, result


def best_of(repeats: int, run: Callable[[], T], device: torch.device | str = "cpu") -> tuple[float, T]:
    """Run once untimed, then return the shortest wall time of ``repeats`` runs and the last run's result."""
    result = run()
    best = math.inf
    for _ in range(repeats):
        seconds, result = timed(run, device)
        best = min(best, seconds)
    return best, result


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative l2 error of ``actual`` against ``expected``."""
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_rows(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 1) -> None:
    """Print rows under ``header``, the first ``left`` columns left-aligned, the others right-aligned."""
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print(" | ".join(cells).rstrip())
