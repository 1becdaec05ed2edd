"""``qmri evaluate-uncertainty``: a chain's calibrated intervals on fresh simulated slices (issue 15, part 4).

Per acceleration, new slices of the calibration's recipe (base seed ``EVALUATION_SEED``, apart from the calibration's
and its check's) are replayed through the shipped chain (``gadgets.calibration_run.replay_slices``), and its map and
SD are scored against the simulator's truth on the calibration's tissue pixels (truth white matter, grey matter,
lesion; kept by the fit):

- pixel coverage of the calibrated interval ``map +- scale * SD``, or with a quantile head's offsets in place of the
  SD (what MapIntervalGadget sends as series 21 and 22;
  its clamping of the lower bound at 0 covers no other positive truth) and its mean width relative to the map in
  white and grey matter;
- seed 001's correlations between the interval's full width and the absolute error, after a Gaussian blur of SD 2
  pixels, globally and per patch (``qmri_models.calibration.evaluation``), per slice, then mean and SD over slices;
- seed 002's question: per slice and truth class (white, grey matter), the error of the structure's mean map value
  and the mean voxel SD inside it; over structures x slices, the correlation of that mean SD with the absolute error
  of the mean. The fraction of structures whose ``|error of the mean| <= scale * mean SD`` (the pixel interval's
  half-width, averaged over the structure) is descriptive only;
- the calibrated structure-level interval (the calibration's structure scale, on the tissue classes of the map as
  StructureReportGadget classifies them): the fraction of structures whose true mean it covers, and for a learned
  map the fraction of tissue pixels flagged out of distribution (brain slices: should be about the flag level).

``evaluate_spheres`` replays the simulator's NIST-like sphere phantom instead and scores every sphere: its mean,
error, mean reported SD, the error in SDs, whether it is flagged out of distribution, and whether the structure
interval covers its true value (at a calibrated acceleration).
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gadgets.calibration_run import (
    REPORTED_TISSUES,
    CalibrationData,
    Coverage,
    calibrated_coverage,
    coverage_table,
    map_chain,
    replay_slices,
)
from qmri_models.calibration.evaluation import (
    BLUR_SIGMA_PX,
    PATCHES_PER_SIDE,
    ErrorCorrelation,
    error_correlation,
    pearson,
    spearman,
    structure_error,
)
from qmri_models.calibration.files import UNCERTAINTY_WORDS, IntervalCalibration
from qmri_models.calibration.offsets import interval_offsets
from qmri_models.calibration.out_of_distribution import disagreement_scores, structure_flagged

EVALUATION_SEED = 400_000
"""Base seed of the evaluation slices (the calibration's is 100 000, its check's 200 000, 300 000 taken too)."""
DEFAULT_SLICES = 20
"""Fresh slices per acceleration (issue 15's evaluation)."""
STRUCTURE_TISSUES = REPORTED_TISSUES
"""Truth classes whose structure means are scored (white and grey matter)."""
CORRELATION_NAMES = tuple(f.name for f in dataclasses.fields(ErrorCorrelation))
"""The correlation figures of each slice, in table order."""


@dataclass(frozen=True)
class Summary:
    """Mean and SD over the slices where a figure is defined."""

    mean: float | None
    sd: float | None
    n: int
    """Slices where it is defined."""


def summarise(values: Sequence[float | None]) -> Summary:
    """Return the mean and SD of the defined values (None where none is)."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if not defined.size:
        return Summary(None, None, 0)
    return Summary(float(defined.mean()), float(defined.std()), int(defined.size))


@dataclass(frozen=True)
class StructureRow:
    """One structure (a truth class of one slice) as seed 002 scores it."""

    slice_index: int
    tissue: str
    n_pixels: int
    mean_error: float
    """Mean map minus mean truth over the structure's kept pixels, in ms."""
    mean_truth: float
    """Mean truth over them, in ms."""
    mean_sd: float
    """Mean fit SD over them, in ms."""


@dataclass(frozen=True)
class AccelerationReport:
    """Everything measured at one acceleration."""

    pixels: Coverage
    """Pixel coverage of ``map +- scale * SD`` in tissue and its width (``gadgets.calibration_run``)."""
    correlations: dict[str, Summary]
    """Per figure of ``ErrorCorrelation``, its mean and SD over slices."""
    structures: list[StructureRow]
    structure_pearson: float | None
    """Over structures x slices: Pearson of the mean voxel SD with the absolute error of the structure mean."""
    structure_spearman: float | None
    structure_within_half_width: float
    """Descriptive, not a calibrated coverage: fraction of structures whose ``|mean error|`` is at most the pixel
    interval's mean half-width over the structure (``scale * mean SD`` without a quantile head)."""


def evaluate_acceleration(
    calibration: IntervalCalibration,
    data: CalibrationData,
    acceleration: int,
    *,
    progress: bool,
    keep: Path | None = None,
) -> AccelerationReport:
    """Return the coverage, width, width-error correlations and structure errors of one acceleration.

    Parameters
    ----------
    calibration : The chain's calibration (its chain is replayed; its scale at ``acceleration`` is used).
    data : The fresh slices (``data.n_slices`` of them).
    acceleration : Undersampling factor.
    progress : Show a progress bar on stderr.
    keep : File to keep the replayed maps in, or reuse them from (``replay_slices``), or None.
    """
    scale = calibration.scale_for(acceleration).scale
    maps = replay_slices(map_chain(calibration.chain), data, acceleration, progress=progress, keep=keep)
    mask = maps.mask(data.tissues)
    below, above = interval_offsets(
        calibration.quantile_head, calibration.quantity, maps.value, maps.sd, maps.model_fit, maps.value > 0
    )
    width = scale * (below + above)
    error = np.abs(maps.value - maps.truth)
    per_slice = [error_correlation(width[i], error[i], mask[i]) for i in range(len(mask))]
    structures, half_widths = [], []
    for tissue in STRUCTURE_TISSUES:
        for i, where in enumerate(maps.mask([tissue])):
            if not where.any():
                continue
            found = structure_error(maps.value[i], maps.truth[i], maps.sd[i], where)
            structures.append(
                StructureRow(
                    slice_index=i,
                    tissue=tissue,
                    n_pixels=found.n_pixels,
                    mean_error=found.mean_error,
                    mean_truth=float(maps.truth[i][where].mean()),
                    mean_sd=found.mean_sd,
                )
            )
            half_widths.append(width[i][where].mean() / 2)
    sds = np.array([s.mean_sd for s in structures])
    errors = np.abs([s.mean_error for s in structures])
    pixels = calibrated_coverage(calibration, maps, data, acceleration, offsets=(below, above))
    return AccelerationReport(
        pixels=pixels,
        correlations={name: summarise([getattr(c, name) for c in per_slice]) for name in CORRELATION_NAMES},
        structures=structures,
        structure_pearson=pearson(sds, errors),
        structure_spearman=spearman(sds, errors),
        structure_within_half_width=float(np.mean(errors <= np.array(half_widths))),
    )


def evaluate_uncertainty(
    calibration: IntervalCalibration,
    *,
    accelerations: Sequence[int],
    n_slices: int,
    matrix: int | None = None,
    seed: int = EVALUATION_SEED,
    progress: bool = True,
    keep_maps: Path | None = None,
) -> list[AccelerationReport]:
    """Return the evaluation of a chain's calibrated intervals at each acceleration (module docstring).

    Parameters
    ----------
    calibration : The chain's calibration; its recipe says what to simulate.
    accelerations : Calibrated accelerations to evaluate.
    n_slices : Fresh slices per acceleration.
    matrix : Image size (None: the recipe's).
    seed : Base seed of the fresh slices; not the calibration's.
    progress : Show progress bars on stderr.
    keep_maps : Folder to keep the replayed maps in (``evaluation_R<R>.npz``) and reuse them from (two calibrations
        of one chain scored on the same slices replay them once), or None.
    """
    recipe = CalibrationData.from_recipe(calibration.recipe)
    if seed == recipe.seed:
        raise ValueError(f"seed {seed} is the calibration's own: fresh slices need another")
    data = dataclasses.replace(recipe, n_slices=n_slices, seed=seed, matrix=recipe.matrix if matrix is None else matrix)
    for acceleration in accelerations:
        calibration.scale_for(acceleration)  # every acceleration is calibrated, before any replay
    return [
        evaluate_acceleration(
            calibration,
            data,
            a,
            progress=progress,
            keep=None if keep_maps is None else keep_maps / f"evaluation_R{a}.npz",
        )
        for a in accelerations
    ]


def _number(value: float | None, digits: int = 3) -> str:
    """Return a figure for the table, ``-`` when undefined."""
    return "-" if value is None else f"{value:.{digits}f}"


def _summary(summary: Summary) -> str:
    """Return ``mean ± SD`` for the table."""
    return "-" if summary.mean is None else f"{summary.mean:.2f}±{summary.sd:.2f}"


def report_table(calibration: IntervalCalibration, reports: Sequence[AccelerationReport]) -> str:
    """Return the three tables (pixel coverage and width, width-error correlation, structures) as Markdown."""
    target = 1 - calibration.alpha
    quantity, head = calibration.quantity, calibration.quantile_head
    interval = (
        f"{quantity} ± λ · SD ({UNCERTAINTY_WORDS[calibration.uncertainty]})"
        if head is None
        else f"[{quantity} - λ · lower, {quantity} + λ · upper] (the offsets of the quantile head {head})"
    )
    lines = [
        f"{calibration.chain}: {interval}, calibration {calibration.id} (target pixel coverage ≥ {target:g})",
        "",
        *coverage_table([r.pixels for r in reports]),
        "",
        f"Interval width vs |error|, both blurred (Gaussian SD {BLUR_SIGMA_PX:g} px, normalised to the tissue "
        f"mask); per slice, then mean ± SD over slices. Region: mean of the correlations within each of "
        f"{PATCHES_PER_SIDE}x{PATCHES_PER_SIDE} patches (seed 001); patch means: correlation of the patches' mean "
        "width and mean error.",
        "",
        "| R | Pearson | Spearman | region Pearson | region Spearman | patch-mean Pearson | patch-mean Spearman |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r.pixels.acceleration} | "
            + " | ".join(_summary(r.correlations[name]) for name in CORRELATION_NAMES)
            + " |"
            for r in reports
        ),
        "",
        "Structures (truth white and grey matter per slice): error of the structure's mean vs truth, mean voxel SD; "
        "correlation over structures x slices of the mean SD with |error of the mean|. 'within half-width' is "
        "descriptive (the fraction with |error of the mean| <= the pixel interval's mean half-width over the "
        "structure), not a calibrated coverage.",
        "",
        "| R | structures | mean |error| ms | mean of mean SD ms | Pearson | Spearman | within half-width |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r.pixels.acceleration} | {len(r.structures)} | "
            f"{np.mean(np.abs([s.mean_error for s in r.structures])):.1f} | "
            f"{np.mean([s.mean_sd for s in r.structures]):.1f} | {_number(r.structure_pearson)} | "
            f"{_number(r.structure_spearman)} | {r.structure_within_half_width:.3f} |"
            for r in reports
        ),
    ]
    return "\n".join(lines)


def report_json(
    calibration: IntervalCalibration, reports: Sequence[AccelerationReport], *, command: str, seed: int
) -> dict[str, Any]:
    """Return the evaluation as a JSON-able dict: the calibration, the command, the seed and every report."""
    return {
        "chain": calibration.chain,
        "calibration_id": calibration.id,
        "quantity": calibration.quantity,
        "alpha": calibration.alpha,
        "delta": calibration.delta,
        "seed": seed,
        "blur_sigma_px": BLUR_SIGMA_PX,
        "patches_per_side": PATCHES_PER_SIDE,
        "command": command,
        "accelerations": [
            {**dataclasses.asdict(r.pixels), "coverage": r.pixels.coverage}
            | {k: v for k, v in dataclasses.asdict(r).items() if k != "pixels"}
            for r in reports
        ],
    }


SPHERE_SEED = 500_000
"""Base seed of the sphere phantom slices (coils, undersampling and noise; the phantom itself is fixed)."""


@dataclass(frozen=True)
class SphereRow:
    """One sphere of one phantom slice, measured on a chain's map."""

    acceleration: int
    slice_index: int
    sphere: str
    n_pixels: int
    """Kept pixels of the sphere."""
    truth: float
    """True value (ms)."""
    mean: float
    """Mean of the map over the sphere (ms)."""
    mean_sd: float
    """Mean of the reported voxel SD over the sphere (ms)."""
    flagged: bool | None
    """More than a quarter of its pixels flagged out of distribution; None without a learned map's threshold."""
    covered: bool | None
    """The calibrated structure interval ``mean -+ lambda * mean SD`` covers the truth; None without a scale."""

    @property
    def error_percent(self) -> float:
        """Error of the sphere's mean, percent of the truth."""
        return 100.0 * (self.mean - self.truth) / self.truth

    @property
    def error_in_sds(self) -> float:
        """Error of the sphere's mean over its mean reported SD (inf for an SD of 0)."""
        return (self.mean - self.truth) / self.mean_sd if self.mean_sd > 0 else float("inf")


def evaluate_spheres(
    calibration: IntervalCalibration,
    *,
    accelerations: Sequence[int],
    n_slices: int,
    matrix: int | None = None,
    seed: int = SPHERE_SEED,
    progress: bool = True,
) -> list[SphereRow]:
    """Return every sphere of ``n_slices`` sphere phantom slices per acceleration, replayed through the chain.

    The phantom is the simulator's (``--phantom spheres``: NIST T1 values, T2 from the NiCl2 rule) at the
    calibration's matrix, coils, SNR and noise; a sphere's pixels are its truth label, kept by the fit. An
    acceleration the calibration does not cover is still measured, without flags or intervals there.

    Parameters
    ----------
    calibration : The chain's calibration.
    accelerations : Undersampling factors.
    n_slices : Phantom slices per acceleration (the same phantom, other coils, masks and noise).
    matrix : Image size (None: the recipe's).
    seed : Base seed of the slices.
    progress : Show progress bars on stderr.
    """
    recipe = CalibrationData.from_recipe(calibration.recipe)
    data = dataclasses.replace(
        recipe,
        n_slices=n_slices,
        seed=seed,
        phantom="spheres",
        tissues=("body",),
        matrix=recipe.matrix if matrix is None else matrix,
    )
    chain = map_chain(calibration.chain)
    rows = []
    for acceleration in accelerations:
        maps = replay_slices(chain, data, acceleration, progress=progress)
        ood = calibration.out_of_distribution
        threshold = None if ood is None else ood.thresholds.get(acceleration)
        structure_scale = (calibration.structure_scales or {}).get(acceleration)
        for i in range(len(maps.value)):
            kept = maps.value[i] > 0
            flags = None
            if threshold is not None and maps.model_fit is not None:
                flags = (disagreement_scores(maps.value[i], maps.model_fit[i]) > threshold) & kept
            for label, name in enumerate(maps.label_names):
                where = (maps.labels[i] == label) & kept
                if not name.startswith("sphere") or not where.any():
                    continue
                truth, mean, sd = (float(a[i][where].mean()) for a in (maps.truth, maps.value, maps.sd))
                rows.append(
                    SphereRow(
                        acceleration=acceleration,
                        slice_index=i,
                        sphere=name,
                        n_pixels=int(where.sum()),
                        truth=truth,
                        mean=mean,
                        mean_sd=sd,
                        flagged=None if flags is None else structure_flagged(flags, where),
                        covered=None if structure_scale is None else abs(mean - truth) <= structure_scale.scale * sd,
                    )
                )
    return rows


def sphere_table(calibration: IntervalCalibration, rows: Sequence[SphereRow]) -> str:
    """Return the per-sphere table (mean over the slices of each acceleration) and the sphere criteria as Markdown."""
    quantity = calibration.quantity
    lines = [
        f"{calibration.chain} on the sphere phantom: {quantity} per sphere, mean over slices; error in SDs = error "
        "of the sphere mean over its mean reported SD; flagged = out of distribution in how many slices; covered = "
        "the structure interval covers the truth in how many slices",
        "",
        f"| R | sphere | true {quantity} ms | mean ms | error % | mean SD ms | error in SDs | flagged | covered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.acceleration, r.sphere) for r in rows})
    for acceleration, sphere in keys:
        group = [r for r in rows if (r.acceleration, r.sphere) == (acceleration, sphere)]
        flagged = [r.flagged for r in group if r.flagged is not None]
        covered = [r.covered for r in group if r.covered is not None]
        lines.append(
            f"| {acceleration} | {sphere} | {np.mean([r.truth for r in group]):.0f} | "
            f"{np.mean([r.mean for r in group]):.0f} | {np.mean([r.error_percent for r in group]):+.1f} | "
            f"{np.mean([r.mean_sd for r in group]):.1f} | {np.mean([r.error_in_sds for r in group]):+.1f} | "
            f"{f'{sum(flagged)}/{len(flagged)}' if flagged else '-'} | "
            f"{f'{sum(covered)}/{len(covered)}' if covered else '-'} |"
        )
    silent = [r for r in rows if abs(r.error_in_sds) > 3 and not r.flagged]
    covered = [r.covered for r in rows if r.covered is not None]
    lines += [
        "",
        f"Sphere x slice cases with |error| > 3 reported SDs and no flag: {len(silent)} of {len(rows)}"
        + (f" ({', '.join(sorted({f'R{r.acceleration} {r.sphere}' for r in silent}))})" if silent else "")
        + ".",
        "Structure interval coverage over sphere x slice cases: "
        + (f"{sum(covered)} of {len(covered)} ({np.mean(covered):.3f})." if covered else "no calibrated scale."),
    ]
    return "\n".join(lines)
