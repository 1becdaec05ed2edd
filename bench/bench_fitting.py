"""Fitting throughput of the batched Levenberg-Marquardt fitter against scipy's ``curve_fit`` looped over pixels.

What it measures
----------------
One simulated slice per contrast (MOLLI T1 and T2-prep T2; 160^2, 8 coils, SNR 50, fully sampled), its noisy phase
images from the inverse FFT and the sensitivity combination. Everything runs on the CPU in this one process.

1. Baselines: ``scipy.optimize.curve_fit`` called once per pixel (method ``lm``, i.e. MINPACK, unbounded), with the
   model as a plain numpy function, started from the same values our fitter starts from (``model.start``, computed
   beforehand for all pixels and not timed), on the same signed data: once as it is usually called (numerical
   Jacobian), once with the analytic Jacobian (``jac=``), MINPACK at its fastest. They run over a random subset of
   the masked pixels (``--baseline-pixels``) and are scaled to pixels per second.
2. ``fit_pixels`` (the core figure): our fitter on the same signed data, every masked pixel at once, start included.
3. ``fit_maps`` (what a chain runs): masking, polarity restoration (for MOLLI two candidate fits per pixel, the
   better kept), the fit and the maps with their SD, every masked pixel.

Signed data: MOLLI's magnitude is negated before its null point (the phase with the smallest magnitude, itself
kept positive), the first of the two candidates ``fit_maps`` tries; T2-prep is fitted as magnitude. Every timing
(ours and the baseline's loop) is the best of ``--repeats`` after an untimed warm-up; torch uses its default thread
count or ``--threads``, curve_fit one core. Agreement is the median relative difference of T1 (MOLLI, Look-Locker
corrected) or T2 against ``curve_fit`` on the baseline's pixels. The target is a speed-up of at least 50 on the CPU
of ``fit_pixels`` (the same job as the loop: one fit per pixel) against the usual ``curve_fit`` call; the speed-up
against the analytic-Jacobian loop is printed beside it, and ``fit_maps`` (two fits per MOLLI pixel) for what a chain
costs. The script never fails on timings (exit code 0).

Run it with::

    cd /work/main && .venv/bin/python bench/bench_fitting.py [--baseline-pixels 2000] [--repeats 5] [--threads 0]
"""

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from bench_common import best_of, cpu_name
from scipy.optimize import OptimizeWarning, curve_fit

from qmri_models.fitting.levenberg_marquardt import fit_pixels
from qmri_models.fitting.maps import fit_maps, signal_mask
from qmri_models.recon.cartesian import centered_ifft2, sensitivity_combine
from qmri_models.signal_models import MODELS, SignalModel
from qmri_models.simulation.scan import Contrast, ScanSettings, simulate_scan

TARGET_SPEEDUP = 50.0
CONTRASTS: dict[str, str] = {"molli": "T1", "t2prep": "T2"}
"""Contrast (and model) name to the map compared."""


def molli(t: np.ndarray, a: float, b: float, t1s: float) -> np.ndarray:
    return a - b * np.exp(-t / t1s)


def molli_jac(t: np.ndarray, a: float, b: float, t1s: float) -> np.ndarray:
    decay = np.exp(-t / t1s)
    return np.stack([np.ones_like(t), -decay, -b * decay * t / t1s**2], axis=-1)


def t2prep(t: np.ndarray, m0: float, t2: float) -> np.ndarray:
    return m0 * np.exp(-t / t2)


def t2prep_jac(t: np.ndarray, m0: float, t2: float) -> np.ndarray:
    decay = np.exp(-t / t2)
    return np.stack([decay, m0 * decay * t / t2**2], axis=-1)


NUMPY_MODELS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    "molli": (molli, molli_jac),
    "t2prep": (t2prep, t2prep_jac),
}


@dataclass
class Slice:
    """One contrast's slice: noisy images, times, mask and the masked pixels' signed data."""

    contrast: str
    images: np.ndarray
    times: np.ndarray
    mask: np.ndarray
    signed: np.ndarray
    """Signed signal of the masked pixels. Shape `(pixels, phases)` float64."""


@dataclass
class Row:
    """One contrast's timings and agreement."""

    contrast: str
    pixels: int
    maps_s: float
    core_s: float
    iterations: int
    start_s: float
    baseline_pixels: int
    baseline_s: float
    baseline_jac_s: float
    baseline_failed: int
    agreement: float
    """Median relative difference of the compared map, fit_pixels against curve_fit."""
    agreement_p99: float
    maps_agreement: float
    """The same for fit_maps (which may pick the other polarity candidate) against curve_fit."""

    @property
    def baseline_px_s(self) -> float:
        return self.baseline_pixels / self.baseline_s

    @property
    def baseline_jac_px_s(self) -> float:
        return self.baseline_pixels / self.baseline_jac_s


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=160)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--snr", type=float, default=50.0)
    parser.add_argument("--baseline-pixels", type=int, default=2000, help="pixels curve_fit loops over")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of every path; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 for torch's default")
    return parser.parse_args()


def load_slice(contrast: str, args: argparse.Namespace) -> Slice:
    settings = ScanSettings(contrast=cast("Contrast", contrast), matrix=args.matrix, n_coils=args.coils, snr=args.snr)
    simulated = simulate_scan(settings)[0]
    images = sensitivity_combine(centered_ifft2(simulated.kdata), simulated.sens)
    times = np.asarray(settings.prep_times, dtype=np.float64)
    mask = signal_mask(images, 0.08)  # fit_maps' default threshold
    magnitude = np.abs(images).reshape(len(times), -1)[:, mask.ravel()].T.astype(np.float64)
    signed = restore_polarity(magnitude, times) if MODELS[contrast].signed else magnitude
    return Slice(contrast, images, times, mask, signed)


def restore_polarity(magnitude: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Negate every phase before the null point (smallest magnitude) in time order: fit_maps' first candidate."""
    order = np.argsort(times)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    null = np.argmin(magnitude[:, order], axis=1)
    return np.where(rank[None, :] < null[:, None], -magnitude, magnitude)


def primary(model: SignalModel, params: np.ndarray) -> np.ndarray:
    """Return the compared map (T1 or T2 in ms) of parameters shaped `(pixels, n_params)`."""
    p = torch.as_tensor(params, dtype=torch.float64)
    covariance = torch.zeros((p.shape[0], p.shape[1], p.shape[1]), dtype=torch.float64)
    return model.maps(p, covariance)[model.primary_map].value.numpy()


def curve_fit_loop(
    contrast: str, data: np.ndarray, times: np.ndarray, start: np.ndarray, *, analytic: bool
) -> np.ndarray:
    """Fit every row of ``data`` with curve_fit; return the parameters (NaN where it failed)."""
    function, analytic_jacobian = NUMPY_MODELS[contrast]
    jacobian = analytic_jacobian if analytic else None
    params = np.full(start.shape, np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in range(data.shape[0]):
            with contextlib.suppress(RuntimeError):  # maxfev reached: the pixel stays NaN
                params[i], _ = curve_fit(function, times, data[i], p0=start[i], jac=jacobian, method="lm")
    return params


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    valid = np.isfinite(ours) & np.isfinite(theirs) & (theirs != 0)
    return np.abs(ours[valid] - theirs[valid]) / np.abs(theirs[valid])


def bench(piece: Slice, args: argparse.Namespace, rng: np.random.Generator) -> Row:
    model = MODELS[piece.contrast]
    times_t = torch.as_tensor(piece.times, dtype=torch.float64)
    data_t = torch.as_tensor(piece.signed, dtype=torch.float64)
    n_pixels = piece.signed.shape[0]

    maps_s, maps = best_of(args.repeats, lambda: fit_maps(model, piece.images, piece.times))
    core_s, core = best_of(args.repeats, lambda: fit_pixels(model, data_t, times_t))
    start_s, start = best_of(args.repeats, lambda: model.start(data_t, times_t))
    if int(maps.mask.sum()) != n_pixels:
        raise RuntimeError(f"fit_maps masked {maps.mask.sum()} pixels, the benchmark {n_pixels}")

    subset = np.sort(rng.choice(n_pixels, size=min(args.baseline_pixels, n_pixels), replace=False))
    start_np = start.numpy()[subset]
    baseline_s, baseline = best_of(
        args.repeats,
        lambda: curve_fit_loop(piece.contrast, piece.signed[subset], piece.times, start_np, analytic=False),
    )
    baseline_jac_s, _ = best_of(
        args.repeats,
        lambda: curve_fit_loop(piece.contrast, piece.signed[subset], piece.times, start_np, analytic=True),
    )
    theirs = primary(model, baseline)
    difference = relative_difference(primary(model, core.params.numpy()[subset]), theirs)
    maps_values = maps.values[model.primary_map][piece.mask][subset]
    return Row(
        contrast=piece.contrast,
        pixels=n_pixels,
        maps_s=maps_s,
        core_s=core_s,
        iterations=core.iterations,
        start_s=start_s,
        baseline_pixels=subset.size,
        baseline_s=baseline_s,
        baseline_jac_s=baseline_jac_s,
        baseline_failed=int(np.isnan(baseline).any(axis=1).sum()),
        agreement=float(np.median(difference)),
        agreement_p99=float(np.percentile(difference, 99)),
        maps_agreement=float(np.median(relative_difference(maps_values.astype(np.float64), theirs))),
    )


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"slice {args.matrix}^2, {args.coils} coils, SNR {args.snr:g}; best of {args.repeats}; "
        f"curve_fit (lm, our start; numerical / analytic Jacobian) over {rows[0].baseline_pixels} pixels, scaled"
    )
    table = [
        (
            "model",
            "path",
            "pixels",
            "ours s",
            "ours px/s",
            "curve_fit px/s",
            "speed-up",
            "+jac px/s",
            "speed-up",
            "agreement",
        )
    ]
    for row in rows:
        map_name = CONTRASTS[row.contrast]
        for path, seconds, agreement in (
            ("fit_maps", row.maps_s, row.maps_agreement),
            ("fit_pixels", row.core_s, row.agreement),
        ):
            table.append(
                (
                    row.contrast,
                    path,
                    f"{row.pixels:,}",
                    f"{seconds:.3f}",
                    f"{row.pixels / seconds:,.0f}",
                    f"{row.baseline_px_s:,.0f}",
                    f"{row.pixels / seconds / row.baseline_px_s:.0f}x",
                    f"{row.baseline_jac_px_s:,.0f}",
                    f"{row.pixels / seconds / row.baseline_jac_px_s:.0f}x",
                    f"{map_name} {agreement:.1e}",
                )
            )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = [cell.ljust(w) for cell, w in zip(line[:2], widths[:2], strict=True)]
        cells += [cell.rjust(w) for cell, w in zip(line[2:], widths[2:], strict=True)]
        print(" | ".join(cells))
    for row in rows:
        print(
            f"{row.contrast}: fit_pixels ran {row.iterations} iterations, its grid-search start "
            f"{row.start_s * 1e3:.0f} ms of {row.core_s * 1e3:.0f} ms; curve_fit {row.baseline_s:.2f} s "
            f"(with jac {row.baseline_jac_s:.2f} s) "
            f"for {row.baseline_pixels} pixels, {row.baseline_failed} failed; "
            f"{CONTRASTS[row.contrast]} difference 99th percentile {row.agreement_p99:.1e}"
        )
    print(
        "fit_maps fits two polarity candidates per MOLLI pixel (as Gadgetron's T1 mapping does); a curve_fit loop "
        "doing the same would run at half the curve_fit px/s above"
    )
    for row in rows:
        speedup = row.pixels / row.core_s / row.baseline_px_s
        verdict = "PASS" if speedup >= TARGET_SPEEDUP else "FAIL"
        print(f"target: {row.contrast} fit_pixels / curve_fit >= {TARGET_SPEEDUP:.0f}x: {speedup:.0f}x {verdict}")


def main() -> int:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = [bench(load_slice(contrast, args), args, rng) for contrast in CONTRASTS]
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
