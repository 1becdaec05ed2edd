"""``qmri evaluate-ensemble``: MC dropout against a deep ensemble of reconstruction networks (issue 15, part 2).

On fresh simulated slices (base seed ``ENSEMBLE_SEED``, far from every training and calibration seed), made as the
training examples are (``qmri_models.training.recon_data``: white noise, ESPIRiT maps from the slice's own
calibration lines), two ways of sampling the reconstruction are compared:

- MC dropout: T passes of the first member with dropout on (``puq_reconstruct``, seeded per slice);
- the deep ensemble: every member once, dropout off (``qmri_models.networks.ensemble``).

Each method's mean images are fitted, guided by its per-phase SD, and so is every sample (``fit_guided_maps``,
model-based fit); the map SD is the SD over the samples' maps. Scored per method:

- pixels, split-conformal: the scale lambda of ``map +- lambda * SD`` is calibrated (``calibrate_interval_scale``,
  ``ALPHA``, ``DELTA``) on the first half of the slices, every truth white or grey matter pixel the fit kept being one
  item (with only a few slices as items no lambda can control the risk: the bound's floor is above alpha), then its
  pixel coverage and mean full width ``2 lambda SD / map`` in white and grey matter are measured on the second half;
- pixels, seed 001: Pearson and Spearman of the blurred SD with the blurred absolute error (``error_correlation``),
  per slice over every slice, mean and SD over slices;
- structures, seed 002's question: per slice, the tissue classes of the map (``classify_tissues``, head classes, at
  least ``MIN_STRUCTURE_PIXELS`` pixels, as ``structure_means``), the error of each structure's mean value, the SD over
  the samples of the structure's mean (its sampled uncertainty) and the mean voxel SD inside it; over structures x
  slices, how each predicts the absolute error of the mean, and how the voxel SD predicts the structure SD (seed 002's
  finding: poorly, for an ensemble); per class, the mean absolute error, structure SD and voxel SD (the correlations
  over all classes follow the differences between classes), and the fraction of structures whose error lies within
  ``STRUCTURE_SDS`` structure SDs;
- time per slice: reconstruction (all samples) and fit (mean and every sample).
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qmri_models.calibration.bounds import BoundName
from qmri_models.calibration.evaluation import BLUR_SIGMA_PX, error_correlation, pearson, spearman
from qmri_models.calibration.risk_control import calibrate_interval_scale
from qmri_models.fitting.guided import fit_guided_maps
from qmri_models.networks.ensemble import check_members, ensemble_reconstruct
from qmri_models.networks.mc_sampling import McEstimate
from qmri_models.networks.puq_recon import puq_reconstruct
from qmri_models.networks.unrolled import UnrolledRecon
from qmri_models.pretrained import CONTRAST_OF_MAP, MapName
from qmri_models.puq_evaluation import model_and_times
from qmri_models.recon.cartesian import calibration_lines, phase_sensitivities
from qmri_models.simulation.scan import ScanSettings, SimulatedSlice, simulate_slice, slice_generators
from qmri_models.structures.classify import HEAD_CLASSES, OUTLIER_NAME, classify_tissues
from qmri_models.structures.means import MIN_STRUCTURE_PIXELS

log = logging.getLogger(__name__)

ENSEMBLE_SEED = 600_000
"""Base seed of the evaluation slices (training runs use small seeds, the calibrations 100 000 to 400 000)."""
DEFAULT_SLICES = 12
DEFAULT_MC_SAMPLES = 20
"""MC-dropout samples T per slice."""
ALPHA = 0.1
"""Tolerated fraction of tissue pixels outside the calibrated interval."""
DELTA = 0.1
"""Tolerated probability that the calibration fails to control it."""
PIXEL_ITEM_BOUND: BoundName = "hoeffding_bentkus"
"""The bound of the pixel-item calibration: each pixel's loss is 0 or 1, where the WSR default gains nothing over
Hoeffding-Bentkus and would scan thousands of items at every lambda."""
LAMBDAS = np.round(np.arange(0.0, 20.0 + 1e-9, 0.01), 12)
"""Candidate interval scales (the calibration run's grid: 0 to 20 in steps of 0.01)."""
TISSUES = ("white_matter", "grey_matter")
"""Truth labels whose pixels are scored."""
STRUCTURE_SDS = 2.0
"""The table counts the structures whose absolute error is within this many structure SDs (descriptive)."""


@dataclass(frozen=True)
class EvaluationSlice:
    """One fresh simulated slice with the coil maps the reconstruction uses."""

    simulated: SimulatedSlice
    sens: np.ndarray
    """ESPIRiT coil sensitivities from the slice's calibration lines. Shape `(coils, y, x)` complex64."""
    truth_ms: np.ndarray
    """True map of the fitted quantity (T1 for ``t1``, T2 for ``t2``) in ms. Shape `(y, x)`."""


def evaluation_slices(
    map_name: MapName, n_slices: int, *, matrix: int, n_coils: int, snr: float, acceleration: int, seed: int
) -> list[EvaluationSlice]:
    """Return ``n_slices`` brain slices simulated as the training examples are, each from its own generator of ``seed``.

    Parameters
    ----------
    map_name : ``t1`` (MOLLI) or ``t2`` (T2-prep).
    n_slices : Slices.
    matrix : Image size in pixels per side.
    n_coils : Receive coils.
    snr : Simulator SNR (``ScanSettings.snr``).
    acceleration : Undersampling factor (its ACS fraction the PUQ paper's).
    seed : Base seed.
    """
    settings = ScanSettings(
        contrast=CONTRAST_OF_MAP[map_name],
        matrix=matrix,
        n_coils=n_coils,
        acceleration=acceleration,
        snr=snr,
        noise="white",  # as the training examples: the networks see prewhitened data
    )
    slices = []
    for rng in slice_generators(seed, n_slices):
        simulated = simulate_slice(settings, rng)
        sens = phase_sensitivities(simulated.kdata, calibration_lines(simulated.sampled))
        truth = simulated.truth.t1_ms if map_name == "t1" else simulated.truth.t2_ms
        slices.append(EvaluationSlice(simulated=simulated, sens=sens, truth_ms=truth))
    return slices


@dataclass(frozen=True)
class MethodMaps:
    """One method's maps of every slice; arrays have the slices first."""

    name: str
    n_samples: int
    value: np.ndarray
    """Map of the mean images. Shape `(slices, y, x)` float32, in ms."""
    sd: np.ndarray
    """SD over the samples' maps. Shape `(slices, y, x)` float32, in ms."""
    samples: np.ndarray
    """Every sample's map. Shape `(slices, samples, y, x)` float32, in ms."""
    kept: np.ndarray
    """Pixels the fit kept. Shape `(slices, y, x)` bool."""
    recon_s: list[float]
    """Reconstruction time of each slice (every sample), in s."""
    fit_s: list[float]
    """Fit time of each slice (mean and every sample), in s."""


Reconstruct = Callable[[int, EvaluationSlice], McEstimate]
"""A method: the estimate of slice ``index`` (mean, per-phase SD, samples `(T, phases, y, x)`)."""


def method_maps(
    name: str, reconstruct: Reconstruct, slices: Sequence[EvaluationSlice], map_name: MapName
) -> MethodMaps:
    """Return the guided model-based maps of every slice by one method, with their times."""
    model, times_ms = model_and_times(map_name)
    quantity = model.primary_map
    parts: dict[str, list[Any]] = {k: [] for k in ("value", "sd", "samples", "kept", "recon_s", "fit_s")}
    n_samples = 0
    for index, item in enumerate(slices):
        started = time.perf_counter()
        estimate = reconstruct(index, item)
        reconstructed = time.perf_counter()
        if estimate.samples is None:
            raise ValueError(f"{name} returned no samples: the map SD is their spread")
        maps = fit_guided_maps(
            model,
            estimate.mean.cpu().numpy(),
            estimate.uncertainty.cpu().numpy(),
            estimate.samples.cpu().numpy(),
            times_ms,
        )
        parts["recon_s"].append(reconstructed - started)
        parts["fit_s"].append(time.perf_counter() - reconstructed)
        parts["value"].append(maps.values[quantity])
        parts["sd"].append(maps.sds[quantity])
        parts["samples"].append(maps.samples[quantity])
        parts["kept"].append(maps.kept)
        n_samples = estimate.n_samples
        log.info("%s: slice %d of %d in %.1f s", name, index + 1, len(slices), time.perf_counter() - started)
    return MethodMaps(
        name=name,
        n_samples=n_samples,
        value=np.stack(parts["value"]),
        sd=np.stack(parts["sd"]),
        samples=np.stack(parts["samples"]),
        kept=np.stack(parts["kept"]),
        recon_s=parts["recon_s"],
        fit_s=parts["fit_s"],
    )


@dataclass(frozen=True)
class Structure:
    """One tissue class of one slice's map."""

    slice_index: int
    name: str
    n_pixels: int
    error: float
    """Mean of the map minus mean of the truth over the structure, in ms."""
    sample_sd: float
    """SD over the samples of the structure's mean in each sample's map, in ms."""
    mean_voxel_sd: float
    """Mean of the map's voxel SD over the structure, in ms."""


def slice_structures(index: int, maps: MethodMaps, truth_ms: np.ndarray) -> list[Structure]:
    """Return the structures of slice ``index`` of ``maps`` (module docstring), scored against ``truth_ms`` `(y, x)`."""
    value, kept = maps.value[index], maps.kept[index] & (maps.value[index] > 0)
    classes = classify_tissues(value, mask=kept, class_names=HEAD_CLASSES)
    structures = []
    for label, name in classes.names_by_label.items():
        pixels = classes.labels == label
        n_pixels = int(pixels.sum())
        if n_pixels < MIN_STRUCTURE_PIXELS:
            continue
        sample_means = maps.samples[index][:, pixels].mean(axis=1, dtype=np.float64)
        structures.append(
            Structure(
                slice_index=index,
                name=name,
                n_pixels=n_pixels,
                error=float(value[pixels].mean(dtype=np.float64) - truth_ms[pixels].mean(dtype=np.float64)),
                sample_sd=float(sample_means.std()),
                mean_voxel_sd=float(maps.sd[index][pixels].mean(dtype=np.float64)),
            )
        )
    return structures


@dataclass(frozen=True)
class PixelInterval:
    """The split-conformal interval ``map +- scale * SD`` of one method, checked on the second half of the slices."""

    scale: float
    """Lambda calibrated on the first half."""
    coverage: float
    """Fraction of the second half's tissue pixels whose truth lies in the interval."""
    width_percent: dict[str, float]
    """Per tissue of ``TISSUES``: mean full width ``2 scale SD / map`` in percent, second half."""


@dataclass(frozen=True)
class MethodReport:
    """Every figure of one method (module docstring)."""

    name: str
    n_samples: int
    interval: PixelInterval | None
    """None when no lambda of ``LAMBDAS`` controls the risk on the first half (the SD far below the errors)."""
    n_calibration_pixels: int
    n_test_pixels: int
    one_sd_coverage: float
    """Fraction of the second half's tissue pixels whose truth lies in ``map +- SD`` (uncalibrated)."""
    error_percent: float
    """Mean absolute error of the map over the tissue pixels (all slices), in percent of the mean truth."""
    pixel_pearson: tuple[float, float]
    """Mean and SD over slices of the Pearson correlation of the blurred SD and absolute error."""
    pixel_spearman: tuple[float, float]
    structures: list[Structure]
    structure_sd_vs_error: tuple[float | None, float | None]
    """Pearson and Spearman, over structures x slices, of the samples' structure SD with |structure error|."""
    voxel_sd_vs_error: tuple[float | None, float | None]
    """The same for the mean voxel SD."""
    voxel_sd_vs_structure_sd: tuple[float | None, float | None]
    """The same of the mean voxel SD with the samples' structure SD."""
    recon_s: float
    """Mean reconstruction time per slice, in s."""
    fit_s: float
    """Mean fit time per slice, in s."""


def pixel_interval(
    value: np.ndarray, sd: np.ndarray, truth: np.ndarray, by_tissue: dict[str, np.ndarray], half: int
) -> PixelInterval | None:
    """Return the interval calibrated on slices ``[:half]`` and checked on ``[half:]``, or None if none controls.

    Parameters
    ----------
    value : Maps. Shape `(slices, y, x)`.
    sd : Their SD maps. Same shape.
    truth : True maps. Same shape.
    by_tissue : Scored pixels of every tissue of ``TISSUES``. Each the same shape, bool.
    half : Slices that calibrate.
    """
    mask = np.logical_or.reduce(list(by_tissue.values()))
    first, second = mask[:half], mask[half:]
    v, t, u = (a[:half][first][:, None] for a in (value, truth, sd))  # every pixel one item
    try:
        calibration = calibrate_interval_scale(v, t, u, u, LAMBDAS, alpha=ALPHA, delta=DELTA, bound=PIXEL_ITEM_BOUND)
    except ValueError as exc:  # the documented refusal: even the largest lambda leaves too many pixels out
        log.warning("no interval: %s", exc)
        return None
    scale = calibration.scale
    covered = np.abs(value - truth) <= scale * sd
    width = 200.0 * scale * sd / np.where(value > 0, value, np.inf)
    return PixelInterval(
        scale=scale,
        coverage=float(covered[half:][second].mean()),
        width_percent={t: float(width[half:][where[half:]].mean()) for t, where in by_tissue.items()},
    )


def score_method(maps: MethodMaps, slices: Sequence[EvaluationSlice]) -> MethodReport:
    """Return the figures of one method's maps of ``slices`` (module docstring); needs at least 2 slices."""
    if len(slices) < 2:
        raise ValueError(f"the split-conformal check needs at least 2 slices, got {len(slices)}")
    truth = np.stack([item.truth_ms for item in slices])
    names = slices[0].simulated.truth.label_names
    labels = np.stack([item.simulated.truth.labels for item in slices])
    scored = maps.kept & (maps.value > 0)
    by_tissue = {tissue: (labels == names.index(tissue)) & scored for tissue in TISSUES}
    mask = np.logical_or.reduce(list(by_tissue.values()))
    half = len(slices) // 2
    error = np.abs(maps.value - truth)
    per_slice = [error_correlation(maps.sd[i], error[i], mask[i]) for i in range(len(slices)) if mask[i].any()]
    structures = [s for i in range(len(slices)) for s in slice_structures(i, maps, truth[i])]
    abs_error = np.abs([s.error for s in structures])
    sample_sd = np.array([s.sample_sd for s in structures])
    voxel_sd = np.array([s.mean_voxel_sd for s in structures])
    return MethodReport(
        name=maps.name,
        n_samples=maps.n_samples,
        interval=pixel_interval(maps.value, maps.sd, truth, by_tissue, half),
        n_calibration_pixels=int(mask[:half].sum()),
        n_test_pixels=int(mask[half:].sum()),
        one_sd_coverage=float((error <= maps.sd)[half:][mask[half:]].mean()),
        error_percent=float(100.0 * error[mask].mean() / truth[mask].mean()),
        pixel_pearson=_mean_sd([c.pearson for c in per_slice]),
        pixel_spearman=_mean_sd([c.spearman for c in per_slice]),
        structures=structures,
        structure_sd_vs_error=(pearson(sample_sd, abs_error), spearman(sample_sd, abs_error)),
        voxel_sd_vs_error=(pearson(voxel_sd, abs_error), spearman(voxel_sd, abs_error)),
        voxel_sd_vs_structure_sd=(pearson(voxel_sd, sample_sd), spearman(voxel_sd, sample_sd)),
        recon_s=float(np.mean(maps.recon_s)),
        fit_s=float(np.mean(maps.fit_s)),
    )


def _mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    """Return the mean and SD of the defined values (NaN when none is)."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if not defined.size:
        return float("nan"), float("nan")
    return float(defined.mean()), float(defined.std())


def evaluate_ensemble(
    members: Sequence[UnrolledRecon],
    map_name: MapName,
    *,
    n_slices: int,
    acceleration: int,
    matrix: int,
    n_coils: int,
    snr: float,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    seed: int = ENSEMBLE_SEED,
    device: str | torch.device = "cpu",
) -> list[MethodReport]:
    """Return the figures of MC dropout (the first member) and of the deep ensemble on the same fresh slices.

    Parameters
    ----------
    members : The ensemble's trained networks (at least 2, one number of phases), on ``device``; the first also
        samples MC dropout.
    map_name : ``t1`` or ``t2``: what the members reconstruct and what is fitted.
    n_slices : Fresh slices (at least 2: half calibrate, half test).
    acceleration : Undersampling factor.
    matrix : Image size in pixels per side.
    n_coils : Receive coils.
    snr : Simulator SNR.
    mc_samples : MC-dropout samples T per slice.
    seed : Base seed of the slices; slice ``i``'s dropout masks are drawn from ``seed + i``.
    device : Where the networks run (the fits run on the CPU).

    Returns
    -------
    MC dropout's report, then the ensemble's.
    """
    check_members(members)
    slices = evaluation_slices(
        map_name, n_slices, matrix=matrix, n_coils=n_coils, snr=snr, acceleration=acceleration, seed=seed
    )

    def mc_dropout(index: int, item: EvaluationSlice) -> McEstimate:
        kdata, sampled = item.simulated.kdata, item.simulated.sampled
        return puq_reconstruct(
            members[0],
            kdata,
            sampled,
            item.sens,
            n_samples=mc_samples,
            device=device,
            keep_samples=True,
            seed=seed + index,
        )

    def ensemble(_: int, item: EvaluationSlice) -> McEstimate:
        return ensemble_reconstruct(members, item.simulated.kdata, item.simulated.sampled, item.sens, device=device)

    methods: dict[str, Reconstruct] = {
        f"MC dropout (member 1, T = {mc_samples})": mc_dropout,
        f"deep ensemble (M = {len(members)})": ensemble,
    }
    return [score_method(method_maps(name, method, slices, map_name), slices) for name, method in methods.items()]


def _figure(value: float | None, digits: int = 3) -> str:
    """Return a figure for the table, ``-`` when undefined."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def report_table(reports: Sequence[MethodReport], *, setup: str) -> str:
    """Return the methods side by side as one Markdown table, after a line on the ``setup`` and before the notes."""
    calibration_slices = "first half of the slices"
    rows: list[tuple[str, Callable[[MethodReport], str]]] = [
        ("samples per slice", lambda r: str(r.n_samples)),
        ("map mean abs error, tissue, % of truth", lambda r: f"{r.error_percent:.2f}"),
        (f"λ (calibrated on the {calibration_slices})", lambda r: _interval(r, lambda i: f"{i.scale:.2f}")),
        (
            f"pixel coverage of map ± λ·SD, second half (target ≥ {1 - ALPHA:g})",
            lambda r: _interval(r, lambda i: f"{i.coverage:.3f}"),
        ),
        *(
            (
                f"mean width {t.replace('_', ' ')}, % of map",
                lambda r, t=t: _interval(r, lambda i: f"{i.width_percent[t]:.1f}"),
            )
            for t in TISSUES
        ),
        ("pixel coverage of map ± 1 SD, second half (uncalibrated)", lambda r: f"{r.one_sd_coverage:.3f}"),
        ("tissue pixels, first half / second half", lambda r: f"{r.n_calibration_pixels} / {r.n_test_pixels}"),
        ("pixel SD vs abs error, Pearson (blurred)", lambda r: "{:.2f} ± {:.2f}".format(*r.pixel_pearson)),
        ("pixel SD vs abs error, Spearman (blurred)", lambda r: "{:.2f} ± {:.2f}".format(*r.pixel_spearman)),
        ("structures (classes x slices)", lambda r: str(len(r.structures))),
        ("mean abs error of structure mean, ms", lambda r: f"{np.mean([abs(s.error) for s in r.structures]):.1f}"),
        ("mean structure SD over samples, ms", lambda r: f"{np.mean([s.sample_sd for s in r.structures]):.1f}"),
        ("mean of mean voxel SD, ms", lambda r: f"{np.mean([s.mean_voxel_sd for s in r.structures]):.1f}"),
        *(
            (f"{name.replace('_', ' ')}: n, abs error / structure SD / voxel SD, ms", lambda r, n=name: _class(r, n))
            for name in (*HEAD_CLASSES, OUTLIER_NAME)
            if any(s.name == name for r in reports for s in r.structures)
        ),
        (
            f"structures with abs error ≤ {STRUCTURE_SDS:g} structure SD",
            lambda r: f"{np.mean([abs(s.error) <= STRUCTURE_SDS * s.sample_sd for s in r.structures]):.3f}",
        ),
        ("structure SD vs abs structure error, Pearson / Spearman", lambda r: _pair(r.structure_sd_vs_error)),
        ("mean voxel SD vs abs structure error, Pearson / Spearman", lambda r: _pair(r.voxel_sd_vs_error)),
        ("mean voxel SD vs structure SD, Pearson / Spearman", lambda r: _pair(r.voxel_sd_vs_structure_sd)),
        ("reconstruction s per slice", lambda r: f"{r.recon_s:.2f}"),
        ("fit s per slice (mean and every sample)", lambda r: f"{r.fit_s:.2f}"),
    ]
    lines = [
        setup,
        "",
        "| figure | " + " | ".join(r.name for r in reports) + " |",
        "|---|" + "---|" * len(reports),
        *(f"| {label} | " + " | ".join(cell(r) for r in reports) + " |" for label, cell in rows),
        "",
        f"λ: calibrate_interval_scale, alpha = {ALPHA:g}, delta = {DELTA:g}, every tissue pixel of the "
        f"{calibration_slices} one item (pixels of a slice are not independent: the guarantee is nominal; the "
        "second half checks it). Tissue: truth white and grey matter kept by the fit. Pixel correlations: per slice "
        f"over every slice after a Gaussian blur of SD {BLUR_SIGMA_PX:g} px, mean ± SD. Structures: the map's tissue "
        "classes per slice; correlations over structures x slices.",
    ]
    return "\n".join(lines)


def _interval(report: MethodReport, cell: Callable[[PixelInterval], str]) -> str:
    """Return a figure of the report's interval, or that no lambda of the grid controls the risk."""
    return f"none ≤ {LAMBDAS[-1]:g}" if report.interval is None else cell(report.interval)


def _class(report: MethodReport, name: str) -> str:
    """Return a tissue class's count and mean absolute error, structure SD and mean voxel SD for the table."""
    chosen = [s for s in report.structures if s.name == name]
    if not chosen:
        return "-"
    error, sample_sd = np.mean([abs(s.error) for s in chosen]), np.mean([s.sample_sd for s in chosen])
    return f"{len(chosen)}: {error:.0f} / {sample_sd:.0f} / {np.mean([s.mean_voxel_sd for s in chosen]):.0f}"


def _pair(values: tuple[float | None, float | None]) -> str:
    """Return ``pearson / spearman`` for the table."""
    return f"{_figure(values[0], 2)} / {_figure(values[1], 2)}"
