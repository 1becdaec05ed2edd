"""Calibrate a classical mapping chain's interval ``map +- scale * SD`` on fresh simulated slices, and check it.

The chain runs as it ships: every calibration slice is simulated (``qmri_models.simulation``, seeds of their own),
replayed through the chain in-process into a temporary folder, and its map (series 11) and the fit's SD (series 12)
are read back beside the simulator's truth. A slice's loss is the fraction of its tissue pixels (truth labels in
``CalibrationData.tissues``, kept by the fit: map > 0) whose true value lies outside ``map +- scale * SD``;
``qmri_models.calibration.risk_control.calibrate_interval_scale`` picks, per acceleration, the smallest scale whose
upper confidence bound on the mean loss is at most alpha (RCPS). ``check_coverage`` replays new slices of the same
recipe and measures the coverage and width of the calibrated intervals; ``model_card`` writes both as Markdown.

Seeds: the raw file ``i`` of acceleration ``R`` has seed ``seed + SEEDS_PER_ACCELERATION * R + i`` (each file holds
``slices_per_file`` slices, spawned from its seed), so calibrating one acceleration alone draws the same slices, and
the calibration's base seed (``CALIBRATION_SEED``) and the check's (``CHECK_SEED``) stay apart from each other and
from the tests', the training's (0, 7, 11 and small offsets) and the PUQ evaluation's (20 251 121).
"""

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from gadgets.evaluate import TRUTH_MAPS, read_series, read_truth
from gadgets.fitting import ParameterFitConfig
from gadgets.image_meta import meaning_of
from gadgets.output import MapSeriesConfig
from gadgets.runtime.chain import Chain, resolve_chain
from gadgets.runtime.replay import replay
from qmri_models.calibration.bounds import DEFAULT_BOUND, BoundName
from qmri_models.calibration.files import IntervalCalibration, UncertaintyName, calibration_id
from qmri_models.calibration.intervals import scaled_interval
from qmri_models.calibration.risk_control import calibrate_interval_scale
from qmri_models.protocols import protocol_spec
from qmri_models.simulation.raw_writer import write_raw
from qmri_models.simulation.scan import NoiseModel, ScanSettings, simulate_scan

ClassicalChain = Literal["t1_molli", "t2prep"]
"""The shipped classical chains (CG-SENSE + least-squares fit) whose fit SD can be calibrated."""
UNCERTAINTY: UncertaintyName = "fit_sd"
"""The uncertainty the classical chains' intervals scale: the fit's SD map."""
CALIBRATION_SEED = 100_000
"""Base seed of the calibration slices."""
CHECK_SEED = 200_000
"""Base seed of the fresh slices that check a calibration."""
SEEDS_PER_ACCELERATION = 1000
"""Seed stride between accelerations: at most this many raw files per acceleration."""
REPORTED_TISSUES = ("white_matter", "grey_matter")
"""The tissues whose mean interval width the check reports (the README's tables)."""


@dataclass(frozen=True)
class CalibrationData:
    """The simulated slices a calibration (or its check) replays, per acceleration; the ``recipe`` of the file."""

    matrix: int = 64
    """Image size in pixels per side."""
    n_coils: int = 8
    """Receive coils."""
    snr: float = 50.0
    """Mean tissue signal of the brightest phase over the noise SD."""
    noise: NoiseModel = "correlated"
    """Coil noise: correlated between coils with unequal levels, or white."""
    acs_fraction: float | None = None
    """Fully sampled centre fraction (None: the simulator's per acceleration)."""
    n_slices: int = 100
    """Slices per acceleration: one loss each."""
    slices_per_file: int = 10
    """Slices per simulated raw file (one replay each)."""
    seed: int = CALIBRATION_SEED
    """Base seed: raw file i of acceleration R has seed + 1000 R + i (``SEEDS_PER_ACCELERATION``)."""
    tissues: tuple[str, ...] = ("white_matter", "grey_matter", "lesion")
    """Truth labels whose pixels count (brain parenchyma), if the fit kept them (map > 0)."""

    def __post_init__(self) -> None:
        for name in ("n_slices", "slices_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.file_sizes()) > SEEDS_PER_ACCELERATION:
            raise ValueError(
                f"n_slices {self.n_slices} needs more than {SEEDS_PER_ACCELERATION} files of {self.slices_per_file}"
            )
        if not self.tissues:
            raise ValueError("tissues must name at least one truth label")

    def file_sizes(self) -> list[int]:
        """Return the number of slices of each raw file of one acceleration."""
        full, rest = divmod(self.n_slices, self.slices_per_file)
        return [self.slices_per_file] * full + ([rest] if rest else [])

    def file_seed(self, acceleration: int, file_index: int) -> int:
        """Return the seed of raw file ``file_index`` of ``acceleration`` (module docstring)."""
        return self.seed + SEEDS_PER_ACCELERATION * acceleration + file_index

    def scan(self, contrast: str, acceleration: int, file_index: int) -> ScanSettings:
        """Return the simulator's settings of raw file ``file_index`` of ``acceleration``."""
        return ScanSettings(
            contrast=contrast,
            matrix=self.matrix,
            n_coils=self.n_coils,
            acceleration=acceleration,
            acs_fraction=self.acs_fraction,
            snr=self.snr,
            seed=self.file_seed(acceleration, file_index),
            n_slices=self.file_sizes()[file_index],
            noise=self.noise,
        )

    def recipe(self, contrast: str, accelerations: Sequence[int]) -> dict[str, Any]:
        """Return the recipe as a calibration file keeps it: the fields, and per acceleration the ACS and file seeds."""
        fields = dataclasses.asdict(self) | {"tissues": list(self.tissues)}
        scans = {a: self.scan(contrast, a, 0) for a in accelerations}
        return {
            **fields,
            "contrast": contrast,
            "phantom": scans[accelerations[0]].phantom,
            "mask": "truth label in tissues and map > 0 (pixels the fit kept)",
            "acs_fraction_used": {str(a): scans[a].acs for a in accelerations},
            "file_seeds": {
                str(a): [self.file_seed(a, i) for i in range(len(self.file_sizes()))] for a in accelerations
            },
        }

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> "CalibrationData":
        """Return the data settings a calibration file's recipe was made with."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in recipe]
        if missing:
            raise ValueError(f"calibration recipe lacks {missing}")
        return cls(**{name: recipe[name] for name in names} | {"tissues": tuple(recipe["tissues"])})


@dataclass(frozen=True)
class ReplayedMaps:
    """A chain's map and SD of simulated slices, beside the truth. Every array has shape `(slices, y, x)`."""

    value: np.ndarray
    """The map (ms), 0 where the fit did not keep the pixel."""
    sd: np.ndarray
    """The fit's SD (ms)."""
    truth: np.ndarray
    """The true map (ms)."""
    labels: np.ndarray
    """Truth tissue label of every pixel, an index into ``label_names``."""
    label_names: tuple[str, ...]

    def mask(self, tissues: Sequence[str]) -> np.ndarray:
        """Return the pixels that count: a truth label in ``tissues`` and kept by the fit. Shape `(slices, y, x)`."""
        unknown = [t for t in tissues if t not in self.label_names]
        if unknown:
            raise ValueError(f"tissues {unknown} are no truth labels (labels: {', '.join(self.label_names)})")
        indices = [self.label_names.index(t) for t in tissues]
        return np.isin(self.labels, indices) & (self.value > 0)


@dataclass(frozen=True)
class MapChain:
    """What a calibration needs to know of a classical chain: what to simulate for it and where its maps go."""

    chain: Chain
    contrast: str
    """The protocol its fit models (the simulator's contrast)."""
    quantity: str
    """The map's role (``T1``, ``T2``)."""
    map_series: int
    sd_series: int


def map_chain(name: str) -> MapChain:
    """Return the shipped chain ``name`` with its fit's protocol and its map and SD series.

    Raises
    ------
    ValueError
        If the chain has no ParameterFitGadget or no MapSeriesGadget that sends the SD.
    """
    chain = resolve_chain(name)
    fits = [s.config for s in chain.stages if isinstance(s.config, ParameterFitConfig)]
    outputs = [s.config for s in chain.stages if isinstance(s.config, MapSeriesConfig) and s.config.send_sd]
    if len(fits) != 1 or len(outputs) != 1:
        raise ValueError(
            f"chain {name!r} needs one ParameterFitGadget and one MapSeriesGadget sending the SD to be calibrated"
        )
    contrast = fits[0].model
    return MapChain(
        chain, contrast, protocol_spec(contrast).quantity, outputs[0].map_series_index, outputs[0].sd_series_index
    )


def replay_slices(chain: MapChain, data: CalibrationData, acceleration: int, *, progress: bool) -> ReplayedMaps:
    """Return the maps ``chain`` makes of ``data``'s slices at ``acceleration`` (simulated, replayed, read back).

    Parameters
    ----------
    chain : The chain (``map_chain``).
    data : The slices.
    acceleration : Undersampling factor of the simulated scans.
    progress : Show a progress bar over the raw files on stderr.

    Returns
    -------
    The maps, SDs and truth of the ``data.n_slices`` slices, in seed order.
    """
    parts: list[ReplayedMaps] = []
    sizes = data.file_sizes()
    files = tqdm(range(len(sizes)), desc=f"{chain.chain.name} R={acceleration}", unit="file", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="qmri-calibrate-") as folder:
        for index in files:
            raw = Path(folder) / f"raw_{index}.h5"
            settings = data.scan(chain.contrast, acceleration, index)
            write_raw(raw, settings, simulate_scan(settings))
            images = replay(raw, chain.chain, Path(folder) / f"out_{index}", progress=False)
            parts.append(_read_maps(chain, images, raw))
    return ReplayedMaps(
        value=np.concatenate([p.value for p in parts]),
        sd=np.concatenate([p.sd for p in parts]),
        truth=np.concatenate([p.truth for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        label_names=parts[0].label_names,
    )


def _read_maps(chain: MapChain, images_file: Path, raw: Path) -> ReplayedMaps:
    """Return the map and SD series of one replay, in slice order, beside its raw file's truth."""
    values, maps = read_series(images_file, chain.map_series)
    sds, sd_images = read_series(images_file, chain.sd_series)
    roles = {meaning_of(image).role for image in maps}
    if roles != {chain.quantity}:
        raise ValueError(f"{chain.chain.name}: series {chain.map_series} holds {sorted(roles)}, not {chain.quantity}")
    map_order = np.argsort([int(image.slice) for image in maps])
    sd_order = np.argsort([int(image.slice) for image in sd_images])
    (labels, truth), names = read_truth(raw, "labels", TRUTH_MAPS[chain.quantity])
    if len(maps) != labels.shape[0] or len(sd_images) != labels.shape[0]:
        raise ValueError(
            f"{raw}: {labels.shape[0]} slices, but {len(maps)} maps and {len(sd_images)} SD maps came back"
        )
    return ReplayedMaps(
        value=values[map_order].astype(np.float64),
        sd=sds[sd_order].astype(np.float64),
        truth=truth.astype(np.float64),
        labels=labels,
        label_names=tuple(names),
    )


@dataclass(frozen=True)
class CalibrationSettings:
    """What to calibrate: which chain, at which risk, with which bound, at which accelerations, over which scales."""

    chain: ClassicalChain
    """The shipped classical chain."""
    alpha: float = 0.1
    """Risk to control: the expected fraction of tissue pixels outside the interval, in (0, 1)."""
    delta: float = 0.1
    """Tolerated probability of failing to control it, in (0, 1)."""
    bound: BoundName = DEFAULT_BOUND
    """Upper confidence bound on the risk."""
    accelerations: tuple[int, ...] = (1, 2, 4)
    """Undersampling factors to calibrate (what the classical chains are used at)."""
    max_scale: float = 20.0
    """Largest candidate scale lambda."""
    scale_step: float = 0.01
    """Spacing of the candidate scales."""
    check_slices: int = 10
    """Fresh slices per acceleration that check the calibration for the model card (0: no check)."""

    def __post_init__(self) -> None:
        for name in ("alpha", "delta"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not self.accelerations or len(set(self.accelerations)) != len(self.accelerations):
            raise ValueError(f"accelerations must be distinct, got {list(self.accelerations)}")
        if min(self.accelerations) < 1:
            raise ValueError(f"accelerations must be at least 1, got {list(self.accelerations)}")
        if not 0 < self.scale_step <= self.max_scale:
            raise ValueError(f"need 0 < scale_step <= max_scale, got {self.scale_step} and {self.max_scale}")
        if self.check_slices < 0:
            raise ValueError(f"check_slices must be at least 0, got {self.check_slices}")

    def lambdas(self) -> np.ndarray:
        """Return the candidate scales ``0, scale_step, ..., max_scale``, to 12 decimals. Shape `(n_lambdas,)`."""
        return np.round(np.arange(round(self.max_scale / self.scale_step) + 1) * self.scale_step, 12)


def calibrate_chain(
    settings: CalibrationSettings, data: CalibrationData, *, command: str, progress: bool = True
) -> IntervalCalibration:
    """Return the calibration of a chain's interval ``map +- scale * fit SD`` at every acceleration.

    Parameters
    ----------
    settings : Chain, risk, bound, accelerations and candidate scales.
    data : The calibration slices (``data.n_slices`` per acceleration).
    command : The command that asked for it (kept in the file).
    progress : Show progress bars on stderr.

    Returns
    -------
    The calibration, one ``Calibration`` per acceleration.

    Raises
    ------
    ValueError
        If no candidate scale controls the risk (too few slices, or ``max_scale`` too small).
    """
    chain = map_chain(settings.chain)
    scales = {}
    for acceleration in settings.accelerations:
        maps = replay_slices(chain, data, acceleration, progress=progress)
        scales[acceleration] = calibrate_interval_scale(
            maps.value,
            maps.truth,
            maps.sd,
            maps.sd,
            settings.lambdas(),
            alpha=settings.alpha,
            delta=settings.delta,
            bound=settings.bound,
            mask=maps.mask(data.tissues),
        )
    grid = {"max_scale": settings.max_scale, "scale_step": settings.scale_step}
    return IntervalCalibration(
        id=calibration_id(settings.chain, UNCERTAINTY, settings.alpha, settings.delta),
        chain=settings.chain,
        quantity=chain.quantity,  # type: ignore[arg-type]  # protocols map to T1 or T2; the record validates it
        uncertainty=UNCERTAINTY,
        alpha=settings.alpha,
        delta=settings.delta,
        bound=settings.bound,
        scales=scales,
        recipe=data.recipe(chain.contrast, settings.accelerations) | grid,
        command=command,
    )


@dataclass(frozen=True)
class Coverage:
    """How a calibrated interval did on fresh slices at one acceleration."""

    acceleration: int
    scale: float
    n_slices: int
    n_pixels: int
    """Tissue pixels scored (the calibration's mask), all slices together."""
    n_covered: int
    """Of them, those whose true value lies in ``map +- scale * SD``."""
    width_percent: dict[str, float]
    """Per reported tissue (``REPORTED_TISSUES``): mean of the full width ``2 scale SD / map`` in percent."""
    median_width_percent: dict[str, float]
    """The same, median (the mean follows the few pixels whose fit is poorly determined)."""

    @property
    def coverage(self) -> float:
        """Fraction of the tissue pixels covered."""
        return self.n_covered / self.n_pixels


def check_coverage(
    calibration: IntervalCalibration,
    *,
    n_slices: int,
    seed: int = CHECK_SEED,
    accelerations: Sequence[int] | None = None,
    progress: bool = True,
) -> list[Coverage]:
    """Return the coverage and width of a calibration's intervals on new slices of its recipe, per acceleration.

    Parameters
    ----------
    calibration : A classical chain's calibration (its recipe says what to simulate).
    n_slices : Fresh slices per acceleration.
    seed : Their base seed (apart from the calibration's).
    accelerations : The calibrated accelerations to check (all if None).
    progress : Show progress bars on stderr.

    Returns
    -------
    One entry per acceleration.
    """
    recipe = CalibrationData.from_recipe(calibration.recipe)
    if seed == recipe.seed:
        raise ValueError(f"seed {seed} is the calibration's own: fresh slices need another")
    data = dataclasses.replace(recipe, n_slices=n_slices, seed=seed)
    chain = map_chain(calibration.chain)
    return [
        interval_coverage(
            replay_slices(chain, data, acceleration, progress=progress),
            data,
            acceleration,
            calibration.scale_for(acceleration).scale,
        )
        for acceleration in (calibration.accelerations if accelerations is None else accelerations)
    ]


def interval_coverage(maps: ReplayedMaps, data: CalibrationData, acceleration: int, scale: float) -> Coverage:
    """Return how often ``map -+ scale * SD`` covers the truth in the tissue of replayed slices, and how wide it is.

    Parameters
    ----------
    maps : The replayed slices' maps, SDs and truth.
    data : Their recipe (its tissues are the coverage mask, with the fit's kept pixels).
    acceleration : Their undersampling factor.
    scale : The interval's lambda.
    """
    mask = maps.mask(data.tissues)
    lower, upper = scaled_interval(maps.value, maps.sd, maps.sd, scale)
    covered = (lower <= maps.truth) & (maps.truth <= upper)
    width = 2.0 * scale * maps.sd / np.where(maps.value > 0, maps.value, np.inf)
    widths = {tissue: 100.0 * width[maps.mask([tissue])] for tissue in REPORTED_TISSUES}
    return Coverage(
        acceleration=acceleration,
        scale=scale,
        n_slices=len(mask),
        n_pixels=int(mask.sum()),
        n_covered=int((covered & mask).sum()),
        width_percent={t: float(w.mean()) for t, w in widths.items()},
        median_width_percent={t: float(np.median(w)) for t, w in widths.items()},
    )


def coverage_table(rows: Sequence[Coverage]) -> list[str]:
    """Return the Markdown table of coverage and width per acceleration (header and one line per row)."""
    tissues = " | ".join(f"width {t.replace('_', ' ')} %, mean / median" for t in REPORTED_TISSUES)
    return [
        f"| acceleration | λ | slices | pixels | coverage | {tissues} |",
        "|---|---|---|---|---|" + "---|" * len(REPORTED_TISSUES),
        *(
            f"| {r.acceleration} | {r.scale:.2f} | {r.n_slices} | {r.n_pixels} | {r.coverage:.4f} | "
            + " | ".join(f"{r.width_percent[t]:.1f} / {r.median_width_percent[t]:.1f}" for t in REPORTED_TISSUES)
            + " |"
            for r in rows
        ),
    ]


def pooled_coverage(rows: Sequence[Coverage]) -> float:
    """Return the fraction of all checked tissue pixels covered, every acceleration together."""
    return sum(r.n_covered for r in rows) / sum(r.n_pixels for r in rows)


def model_card(calibration: IntervalCalibration, checks: Sequence[Coverage], *, file_name: str) -> str:
    """Return the Markdown model card of a calibration file: guarantee, data recipe, scales, fresh-slice check.

    Parameters
    ----------
    calibration : The calibration.
    checks : Its coverage on fresh slices (``check_coverage``), or none.
    file_name : The calibration file's name, as the card names it.
    """
    recipe = calibration.recipe
    quantity = calibration.quantity
    lines = [
        f"# Calibrated {quantity} intervals of `{calibration.chain}`: {quantity} ± λ · fit SD",
        "",
        f"Calibration `{calibration.id}` (`{file_name}`): the interval `{quantity} ± λ · SD` around the map of "
        f"series 11 with the fit's SD of series 12, λ per acceleration. For a new slice drawn as the calibration "
        f"slices were, the expected fraction of tissue pixels whose true {quantity} lies outside the interval is at "
        f"most alpha = {calibration.alpha:g}, with probability at least 1 - delta = {1 - calibration.delta:g} over the "
        f"calibration draw (risk-controlling prediction sets, Bates et al. 2021, with the `{calibration.bound}` "
        "upper confidence bound; seed 001). The guarantee holds for data like the calibration data below: brain "
        "slices of the simulator at these settings, not phantoms or other anatomy.",
        "",
        "## Calibration data",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {_cell(value)} |" for key, value in recipe.items() if key != "file_seeds"),
        "",
        f"Raw file seeds per acceleration: {_cell(recipe.get('file_seeds', {}))}.",
        "",
        "## Scales",
        "",
        "| acceleration | λ | slices n | empirical risk | upper confidence bound |",
        "|---|---|---|---|---|",
        *(
            f"| {a} | {c.scale:.2f} | {c.n_items} | {c.risk:.4f} | {c.risk_ucb:.4f} |"
            for a, c in ((a, calibration.scale_for(a)) for a in calibration.accelerations)
        ),
    ]
    if checks:
        lines += [
            "",
            "## Check on fresh slices",
            "",
            f"New slices of the same recipe (other seeds), replayed through `{calibration.chain}`: coverage is the "
            f"fraction of tissue pixels whose true {quantity} lies in the interval (target at least "
            f"{1 - calibration.alpha:g}); width is the mean full width `2 λ SD / {quantity}`.",
            "",
            *coverage_table(checks),
            "",
            f"All accelerations together: coverage {pooled_coverage(checks):.4f}.",
        ]
    lines += ["", "## Command", "", "```", calibration.command, "```", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """Return a recipe value as a table cell."""
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_cell(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def card_path(calibration_file: Path) -> Path:
    """Return the model card beside a calibration file (same stem, ``.md``)."""
    return calibration_file.with_suffix(".md")
