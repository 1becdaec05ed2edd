"""Calibrate a mapping chain's interval ``map +- scale * SD`` on fresh simulated slices, and check it.

The chain runs as it ships (less its MapIntervalGadget, whose bounds are what is being calibrated): every calibration
slice is simulated (``qmri_models.simulation``, seeds of their own), replayed through the chain in-process into a
temporary folder, and its map (series 11) and SD (series 12; the fit's, or for PUQ the MC spread, by default combined
with the learned fit's distance to the model fit) are read back beside the simulator's truth. A chain with a learned
map also sends the model-based fit of the same images (series 16): from it, per acceleration, the out-of-distribution
threshold is set (``qmri_models.calibration.out_of_distribution``). A slice's loss is the fraction of its tissue
pixels (truth labels in ``CalibrationData.tissues``, kept by the fit: map > 0) whose true value lies outside
``map +- scale * SD``;
``qmri_models.calibration.risk_control.calibrate_interval_scale`` picks, per acceleration, the smallest scale whose
upper confidence bound on the mean loss is at most alpha (RCPS). ``check_coverage`` replays new slices of the same
recipe and measures the coverage and width of the calibrated intervals; ``model_card`` writes both as Markdown.

Seeds: the raw file ``i`` of acceleration ``R`` has seed ``seed + SEEDS_PER_ACCELERATION * R + i`` (each file holds
``slices_per_file`` slices, spawned from its seed), so calibrating one acceleration alone draws the same slices, and
the calibration's base seed (``CALIBRATION_SEED``) and the check's (``CHECK_SEED``) stay apart from each other and
from the tests', the training's (0, 7, 11 and small offsets) and the PUQ evaluation's (20 251 121).
"""

import dataclasses
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from gadgets.evaluate import TRUTH_MAPS, read_series, read_truth
from gadgets.fitting import ParameterFitConfig
from gadgets.image_meta import meaning_of
from gadgets.intervals import MapIntervalConfig
from gadgets.output import MapSeriesConfig
from gadgets.puq_fit import PuqFitConfig
from gadgets.puq_recon import PuqReconConfig
from gadgets.runtime.chain import Chain, resolve_chain
from gadgets.runtime.replay import replay
from gadgets.structure_report import StructureReportConfig
from qmri_models.calibration.bounds import DEFAULT_BOUND, BoundName
from qmri_models.calibration.files import UNCERTAINTY_WORDS, IntervalCalibration, UncertaintyName, calibration_id
from qmri_models.calibration.intervals import scaled_interval
from qmri_models.calibration.offsets import interval_offsets
from qmri_models.calibration.out_of_distribution import (
    OOD_LEVEL,
    OutOfDistribution,
    conformal_threshold,
    disagreement_scores,
)
from qmri_models.calibration.risk_control import calibrate_interval_scale
from qmri_models.pretrained import quantile_head_training, weights_sha256
from qmri_models.protocols import protocol_spec
from qmri_models.simulation.raw_writer import write_raw
from qmri_models.simulation.scan import NoiseModel, Phantom, ScanSettings, simulate_scan
from qmri_models.structures.classify import classes_for
from qmri_models.structures.means import MIN_STRUCTURE_PIXELS, StructureMeans, structure_means

log = logging.getLogger(__name__)

CalibratedChain = Literal["t1_molli", "t2prep", "t1_molli_puq", "t2prep_puq"]
"""The shipped mapping chains whose map SD can be calibrated: classical (CG-SENSE + least-squares fit) and PUQ."""
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
    phantom: Phantom = "brain"
    """What the slices show: brain slices (what calibrations are made on), or the NIST-like sphere phantom."""

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
            phantom=self.phantom,
        )

    def recipe(self, contrast: str, accelerations: Sequence[int]) -> dict[str, Any]:
        """Return the recipe as a calibration file keeps it: the fields, and per acceleration the ACS and file seeds."""
        fields = dataclasses.asdict(self) | {"tissues": list(self.tissues)}
        scans = {a: self.scan(contrast, a, 0) for a in accelerations}
        return {
            **fields,
            "contrast": contrast,
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
    model_fit: np.ndarray | None = None
    """Beside a learned map: the model-based fit of the same images (ms), 0 where the map is 0; else None."""
    provenance: str = ""
    """What made them (``replay_provenance``: the chain as configured, the slices' recipe, the acceleration)."""

    def save(self, path: Path) -> None:
        """Write the arrays and provenance to an ``.npz`` file (for reuse and analyses, without replaying)."""
        arrays = {"value": self.value, "sd": self.sd, "truth": self.truth, "labels": self.labels}
        if self.model_fit is not None:
            arrays["model_fit"] = self.model_fit
        arrays["label_names"] = np.array(self.label_names)
        arrays["provenance"] = np.array(self.provenance)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its bool flag

    def structures(self, class_names: Sequence[str]) -> StructureMeans:
        """Return every slice's structures of ``class_names`` (as StructureReportGadget's) with their true means."""
        return structure_means(self.value, self.sd, self.truth, self.value > 0, class_names=class_names)

    @classmethod
    def load(cls, path: Path) -> "ReplayedMaps":
        """Return the maps ``save`` wrote to ``path``."""
        with np.load(path) as arrays:
            return cls(
                value=arrays["value"],
                sd=arrays["sd"],
                truth=arrays["truth"],
                labels=arrays["labels"],
                label_names=tuple(str(name) for name in arrays["label_names"]),
                model_fit=arrays.get("model_fit", None),
                provenance=str(arrays["provenance"]) if "provenance" in arrays else "",
            )

    def object_mask(self) -> np.ndarray:
        """Return the object's pixels (any truth label but background) the fit kept. Shape `(slices, y, x)`."""
        return (self.labels > 0) & (self.value > 0)

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
    uncertainty: UncertaintyName
    """The kind of SD the chain's maps carry (``SliceMaps.sd_kind``)."""
    model_fit_series: int | None
    """Series of the model-based fit beside a learned map, or None."""
    mc_samples: int | None
    """MC samples per slice of a PUQ reconstruction, or None."""
    structure_classes: tuple[str, ...]
    """The classes of its StructureReportGadget, or without one the default classes of its map's quantity."""


def map_chain(name: str) -> MapChain:
    """Return the shipped chain ``name`` with what a calibration needs of it.

    The chain loses its MapIntervalGadget and StructureReportGadget, whose intervals are what is being calibrated
    (the classes of the latter are kept).

    Raises
    ------
    ValueError
        If the chain has no ParameterFitGadget (or PuqFitGadget) or no MapSeriesGadget that sends the SD.
    """
    shipped = resolve_chain(name)
    calibrated = (MapIntervalConfig, StructureReportConfig)
    chain = dataclasses.replace(
        shipped, stages=tuple(s for s in shipped.stages if not isinstance(s.config, calibrated))
    )
    reports = [s.config for s in shipped.stages if isinstance(s.config, StructureReportConfig)]
    fits = [s.config for s in chain.stages if isinstance(s.config, ParameterFitConfig)]
    outputs = [s.config for s in chain.stages if isinstance(s.config, MapSeriesConfig) and s.config.send_sd]
    if len(fits) != 1 or len(outputs) != 1:
        raise ValueError(
            f"chain {name!r} needs one ParameterFitGadget and one MapSeriesGadget sending the SD to be calibrated"
        )
    fit, output = fits[0], outputs[0]
    learned = isinstance(fit, PuqFitConfig) and fit.fit == "learned"
    uncertainty: UncertaintyName = "fit_sd"
    if isinstance(fit, PuqFitConfig):
        uncertainty = "mc_sd_disagreement" if learned and fit.sd_with_disagreement else "mc_sd"
    recons = [s.config.mc_samples for s in chain.stages if isinstance(s.config, PuqReconConfig)]
    quantity = protocol_spec(fit.model).quantity
    return MapChain(
        chain,
        fit.model,
        quantity,
        output.map_series_index,
        output.sd_series_index,
        uncertainty,
        output.model_fit_series_index if learned and output.send_model_fit else None,
        recons[0] if recons else None,
        reports[0].classes_of(quantity) if reports else classes_for(quantity),
    )


def chain_calibration(name: str) -> str:
    """Return the calibration the shipped chain ``name``'s MapIntervalGadget uses (its default for evaluations).

    Raises
    ------
    ValueError
        If the chain has no MapIntervalGadget.
    """
    configs = [s.config for s in resolve_chain(name).stages if isinstance(s.config, MapIntervalConfig)]
    if not configs:
        raise ValueError(f"chain {name!r} has no MapIntervalGadget: name a calibration")
    return configs[0].calibration


def replay_provenance(chain: MapChain, data: CalibrationData, acceleration: int) -> str:
    """Return what identifies replayed maps.

    That is the chain with every property, the SHA-256 of every network weights file it loads (a network retrained
    and shipped under the same name makes other maps), the slices' recipe and the acceleration.
    """
    stages = [s.config for s in chain.chain.stages]
    recon = [weights_sha256("recon", c.weights) for c in stages if isinstance(c, PuqReconConfig)]
    fit = [weights_sha256("fit", c.fit_weights) for c in stages if isinstance(c, PuqFitConfig)]
    identity = {
        "chain": chain.chain.name,
        "stages": [[stage.name, stage.spec.classname, repr(stage.config)] for stage in chain.chain.stages],
        "weights": recon + fit,
        "recipe": data.recipe(chain.contrast, [acceleration]),
        "acceleration": acceleration,
    }
    return json.dumps(identity, sort_keys=True)


def replay_slices(
    chain: MapChain, data: CalibrationData, acceleration: int, *, progress: bool, keep: Path | None = None
) -> ReplayedMaps:
    """Return the maps ``chain`` makes of ``data``'s slices at ``acceleration`` (simulated, replayed, read back).

    With ``keep``, maps an earlier call kept there are reused when their provenance (``replay_provenance``) is this
    call's: a calibration or evaluation interrupted or repeated replays only what it lacks.

    Parameters
    ----------
    chain : The chain (``map_chain``).
    data : The slices.
    acceleration : Undersampling factor of the simulated scans.
    progress : Show a progress bar over the raw files on stderr.
    keep : Also write the replayed maps there (``ReplayedMaps.save``), or reuse them from there; or None.

    Returns
    -------
    The maps, SDs and truth of the ``data.n_slices`` slices, in seed order.
    """
    provenance = replay_provenance(chain, data, acceleration)
    if keep is not None and keep.is_file():
        kept = ReplayedMaps.load(keep)
        if kept.provenance == provenance:
            log.info("%s R=%d: reusing the maps kept in %s", chain.chain.name, acceleration, keep)
            return kept
        log.info("%s R=%d: %s was made by another chain or recipe; replaying", chain.chain.name, acceleration, keep)
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
    model_fits = [p.model_fit for p in parts if p.model_fit is not None]
    maps = ReplayedMaps(
        value=np.concatenate([p.value for p in parts]),
        sd=np.concatenate([p.sd for p in parts]),
        truth=np.concatenate([p.truth for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        label_names=parts[0].label_names,
        model_fit=np.concatenate(model_fits) if model_fits else None,
        provenance=provenance,
    )
    if keep is not None:
        maps.save(keep)
    return maps


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
    model_fit = None
    if chain.model_fit_series is not None:
        fits, fit_images = read_series(images_file, chain.model_fit_series)
        if len(fit_images) != labels.shape[0]:
            raise ValueError(f"{raw}: {labels.shape[0]} slices, but {len(fit_images)} model-fit maps came back")
        model_fit = fits[np.argsort([int(image.slice) for image in fit_images])].astype(np.float64)
    return ReplayedMaps(
        value=values[map_order].astype(np.float64),
        sd=sds[sd_order].astype(np.float64),
        truth=truth.astype(np.float64),
        labels=labels,
        label_names=tuple(names),
        model_fit=model_fit,
    )


@dataclass(frozen=True)
class CalibrationSettings:
    """What to calibrate: which chain, at which risk, with which bound, at which accelerations, over which scales."""

    chain: CalibratedChain
    """The shipped mapping chain."""
    alpha: float = 0.1
    """Risk to control: the expected fraction of tissue pixels outside the interval, in (0, 1)."""
    delta: float = 0.1
    """Tolerated probability of failing to control it, in (0, 1)."""
    bound: BoundName = DEFAULT_BOUND
    """Upper confidence bound on the risk."""
    accelerations: tuple[int, ...] = (1, 2, 4)
    """Undersampling factors to calibrate (the classical chains' use; PUQ's networks were trained at 6, 8 and 10)."""
    max_scale: float = 20.0
    """Largest candidate scale lambda."""
    scale_step: float = 0.01
    """Spacing of the candidate scales."""
    check_slices: int = 10
    """Fresh slices per acceleration that check the calibration for the model card (0: no check)."""
    ood_level: float = OOD_LEVEL
    """Chains with a learned map: fraction of calibration object pixels the out-of-distribution threshold flags."""
    keep_maps: Path | None = None
    """Folder to keep the replayed maps in (``calibration_R<R>.npz``, ``check_R<R>.npz``; maps of the same chain
    and recipe already there are reused, not replayed), or None."""
    quantile_head: str | None = None
    """Scale a map quantile head's offsets instead of the SD: a shipped head (the chain's name) or a weights file of
    ``qmri train map-quantile-head`` (trained on other slices than these), or None."""

    def __post_init__(self) -> None:
        for name in ("alpha", "delta", "ood_level"):
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
    """Return the calibration of a chain's interval ``map +- scale * SD`` at every acceleration.

    Also the structure-level interval's scale per acceleration (``qmri_models.structures.means``: the tissue classes
    of each slice's map; a slice's loss is the fraction of its structures whose true mean lies outside
    ``mean +- scale * mean voxel SD``) and, for a chain with a learned map, the out-of-distribution thresholds: per
    acceleration the conformal ``1 - settings.ood_level`` quantile of the learned map's distance to the model fit
    over the object's kept pixels (``out_of_distribution_threshold``).

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
    structure_scales = {}
    thresholds = {}
    calibrate = partial(
        calibrate_interval_scale,
        lambdas=settings.lambdas(),
        alpha=settings.alpha,
        delta=settings.delta,
        bound=settings.bound,
    )
    for acceleration in settings.accelerations:
        keep = None if settings.keep_maps is None else settings.keep_maps / f"calibration_R{acceleration}.npz"
        maps = replay_slices(chain, data, acceleration, progress=progress, keep=keep)
        if maps.model_fit is not None:
            thresholds[acceleration] = out_of_distribution_threshold(maps, settings.ood_level)
        lower, upper = interval_offsets(
            settings.quantile_head, chain.quantity, maps.value, maps.sd, maps.model_fit, maps.value > 0
        )
        scales[acceleration] = calibrate(maps.value, maps.truth, lower, upper, mask=maps.mask(data.tissues))
        structures = maps.structures(chain.structure_classes)
        structure_scales[acceleration] = calibrate(
            structures.value, structures.truth, structures.sd, structures.sd, mask=structures.valid
        )
    grid = {"max_scale": settings.max_scale, "scale_step": settings.scale_step}
    chain_settings: dict[str, Any] = {"structure_classes": list(chain.structure_classes)}
    if chain.mc_samples is not None:
        chain_settings["mc_samples"] = chain.mc_samples
    head = settings.quantile_head is not None
    return IntervalCalibration(
        id=calibration_id(settings.chain, chain.uncertainty, settings.alpha, settings.delta, quantile_head=head),
        chain=settings.chain,
        quantity=chain.quantity,  # type: ignore[arg-type]  # protocols map to T1 or T2; the record validates it
        uncertainty=chain.uncertainty,
        alpha=settings.alpha,
        delta=settings.delta,
        bound=settings.bound,
        scales=scales,
        recipe=data.recipe(chain.contrast, settings.accelerations) | grid | chain_settings,
        command=command,
        out_of_distribution=OutOfDistribution(settings.ood_level, thresholds) if thresholds else None,
        structure_scales=structure_scales,
        quantile_head=settings.quantile_head,
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
    """Per reported tissue (``REPORTED_TISSUES``): mean of the full width ``scale (lower + upper) / map`` in percent
    (``2 scale SD / map`` without a quantile head)."""
    median_width_percent: dict[str, float]
    """The same, median (the mean follows the few pixels whose fit is poorly determined)."""
    n_flagged: int | None = None
    """Of the tissue pixels, those flagged out of distribution (learned maps with a threshold), else None."""
    n_structures: int = 0
    """Classified structures of all slices (``qmri_models.structures.means``), when a structure scale was checked."""
    n_structures_covered: int = 0
    """Of them, those whose true mean lies in ``mean +- structure scale * mean voxel SD``."""

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
    keep_maps: Path | None = None,
) -> list[Coverage]:
    """Return the coverage and width of a calibration's intervals on new slices of its recipe, per acceleration.

    Parameters
    ----------
    calibration : A chain's calibration (its recipe says what to simulate).
    n_slices : Fresh slices per acceleration.
    seed : Their base seed (apart from the calibration's).
    accelerations : The calibrated accelerations to check (all if None).
    progress : Show progress bars on stderr.
    keep_maps : Folder to keep the replayed maps in (``check_R<R>.npz``), or None.

    Returns
    -------
    One entry per acceleration.
    """
    recipe = CalibrationData.from_recipe(calibration.recipe)
    if seed == recipe.seed:
        raise ValueError(f"seed {seed} is the calibration's own: fresh slices need another")
    data = dataclasses.replace(recipe, n_slices=n_slices, seed=seed)
    chain = map_chain(calibration.chain)
    checks = []
    for acceleration in calibration.accelerations if accelerations is None else accelerations:
        keep = None if keep_maps is None else keep_maps / f"check_R{acceleration}.npz"
        maps = replay_slices(chain, data, acceleration, progress=progress, keep=keep)
        checks.append(calibrated_coverage(calibration, maps, data, acceleration))
    return checks


def calibrated_coverage(
    calibration: IntervalCalibration,
    maps: ReplayedMaps,
    data: CalibrationData,
    acceleration: int,
    *,
    offsets: tuple[np.ndarray, np.ndarray] | None = None,
) -> Coverage:
    """Return the coverage of a calibration's pixel and (if any) structure intervals on maps at ``acceleration``.

    With an out-of-distribution threshold there, the flagged tissue pixels are counted too. ``offsets`` are the
    interval's offsets of these maps when the caller has them already (``interval_offsets``); None: made here.
    """
    ood = calibration.out_of_distribution
    threshold = None if ood is None else ood.thresholds.get(acceleration)
    scale = calibration.scale_for(acceleration).scale
    if offsets is None:
        offsets = interval_offsets(
            calibration.quantile_head, calibration.quantity, maps.value, maps.sd, maps.model_fit, maps.value > 0
        )
    coverage = interval_coverage(maps, data, acceleration, scale, offsets=offsets, ood_threshold=threshold)
    structure_scale = (calibration.structure_scales or {}).get(acceleration)
    if structure_scale is not None:
        classes = calibration.recipe["structure_classes"]
        coverage = structure_coverage(coverage, maps.structures(classes), structure_scale.scale)
    return coverage


def out_of_distribution_threshold(maps: ReplayedMaps, level: float) -> float:
    """Return the conformal ``1 - level`` quantile of the learned map's distance to the model fit over the object.

    Every kept pixel of the imaged object counts (white and grey matter, CSF, fat, lesions: what the learned fit was
    trained on), not only the tissue whose coverage is calibrated, since every kept pixel is flagged or not.
    """
    if maps.model_fit is None:
        raise ValueError("the maps have no model fit beside them: only a learned map has out-of-distribution flags")
    mask = maps.object_mask()
    return conformal_threshold(disagreement_scores(maps.value[mask], maps.model_fit[mask]), level)


def interval_coverage(
    maps: ReplayedMaps,
    data: CalibrationData,
    acceleration: int,
    scale: float,
    *,
    offsets: tuple[np.ndarray, np.ndarray] | None = None,
    ood_threshold: float | None = None,
) -> Coverage:
    """Return how often ``[map - scale lower, map + scale upper]`` covers the truth in tissue, and how wide it is.

    Parameters
    ----------
    maps : The replayed slices' maps, SDs and truth.
    data : Their recipe (its tissues are the coverage mask, with the fit's kept pixels).
    acceleration : Their undersampling factor.
    scale : The interval's lambda.
    offsets : Lower and upper offsets (``qmri_models.calibration.offsets``), shaped as the maps; None: the SD.
    ood_threshold : The out-of-distribution threshold at this acceleration, to count the flagged tissue pixels
        (needs ``maps.model_fit``), or None.
    """
    mask = maps.mask(data.tissues)
    below, above = (maps.sd, maps.sd) if offsets is None else offsets
    lower, upper = scaled_interval(maps.value, below, above, scale)
    covered = (lower <= maps.truth) & (maps.truth <= upper)
    width = scale * (below + above) / np.where(maps.value > 0, maps.value, np.inf)
    widths = {tissue: 100.0 * width[maps.mask([tissue])] for tissue in REPORTED_TISSUES}
    return Coverage(
        acceleration=acceleration,
        scale=scale,
        n_slices=len(mask),
        n_pixels=int(mask.sum()),
        n_covered=int((covered & mask).sum()),
        width_percent={t: float(w.mean()) for t, w in widths.items()},
        median_width_percent={t: float(np.median(w)) for t, w in widths.items()},
        n_flagged=(
            None
            if ood_threshold is None or maps.model_fit is None
            else int((disagreement_scores(maps.value[mask], maps.model_fit[mask]) > ood_threshold).sum())
        ),
    )


def structure_coverage(coverage: Coverage, structures: StructureMeans, scale: float) -> Coverage:
    """Return ``coverage`` with the count of structures whose true mean lies in ``mean -+ scale * mean voxel SD``."""
    lower, upper = scaled_interval(structures.value, structures.sd, structures.sd, scale)
    covered = (lower <= structures.truth) & (structures.truth <= upper) & structures.valid
    return dataclasses.replace(
        coverage, n_structures=int(structures.valid.sum()), n_structures_covered=int(covered.sum())
    )


def coverage_table(rows: Sequence[Coverage]) -> list[str]:
    """Return the Markdown table of coverage and width per acceleration (header and one line per row).

    Columns for the structure-level coverage and the out-of-distribution flags appear when a row has them.
    """
    header = ["acceleration", "λ", "slices", "pixels", "coverage"]
    header += [f"width {t.replace('_', ' ')} %, mean / median" for t in REPORTED_TISSUES]
    structures = any(r.n_structures for r in rows)
    flags = any(r.n_flagged is not None for r in rows)
    header += ["structures covered"] * structures + ["flagged out of distribution %"] * flags
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r.acceleration), f"{r.scale:.2f}", str(r.n_slices), str(r.n_pixels), f"{r.coverage:.4f}"]
        cells += [f"{r.width_percent[t]:.1f} / {r.median_width_percent[t]:.1f}" for t in REPORTED_TISSUES]
        if structures:
            share = r.n_structures_covered / r.n_structures if r.n_structures else float("nan")
            cells.append(f"{r.n_structures_covered} / {r.n_structures} ({share:.3f})")
        if flags:
            cells.append("-" if r.n_flagged is None else f"{100 * r.n_flagged / r.n_pixels:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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
    head = calibration.quantile_head
    form = f"{quantity} ± λ · SD" if head is None else f"[{quantity} - λ · lower, {quantity} + λ · upper]"
    offsets = (
        f"with the SD of series 12 ({UNCERTAINTY_WORDS[calibration.uncertainty]})"
        if head is None
        else f"with the offsets `lower` and `upper` of the map quantile head `{head}` (trained by the pinball loss "
        f"at alpha/2 and 1 - alpha/2 on other slices, `qmri train map-quantile-head`; its inputs: the map, the SD of "
        f"series 12 ({UNCERTAINTY_WORDS[calibration.uncertainty]}) and the model fit of series 16)"
    )
    lines = [
        f"# Calibrated {quantity} intervals of `{calibration.chain}`: {form}",
        "",
        f"Calibration `{calibration.id}` (`{file_name}`): the interval `{form}` around the map of series 11 "
        f"{offsets}, λ per acceleration. "
        "For a new slice drawn as the calibration slices were, the expected fraction of tissue pixels whose true "
        f"{quantity} lies outside the interval is at most alpha = {calibration.alpha:g}, with probability at least "
        f"1 - delta = {1 - calibration.delta:g} over the calibration draw (risk-controlling prediction sets, Bates "
        f"et al. 2021, with the `{calibration.bound}` upper confidence bound; seed 001). The guarantee holds for "
        "data like the calibration data below: brain slices of the simulator at these settings, not phantoms or "
        "other anatomy.",
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
    if calibration.structure_scales:
        lines += [
            "",
            "## Structure scales",
            "",
            f"The structure-level interval `mean ± λ · mean voxel SD` of each tissue class of the map (classified on "
            f"the map itself, as StructureReportGadget does; classes under {MIN_STRUCTURE_PIXELS} pixels left out): "
            f"for a new slice, the expected fraction of its structures whose true mean {quantity} lies outside is at "
            f"most alpha = {calibration.alpha:g}, with probability at least {1 - calibration.delta:g}.",
            "",
            "| acceleration | λ | slices n | empirical risk | upper confidence bound |",
            "|---|---|---|---|---|",
            *(
                f"| {a} | {c.scale:.2f} | {c.n_items} | {c.risk:.4f} | {c.risk_ucb:.4f} |"
                for a, c in sorted(calibration.structure_scales.items())
            ),
        ]
    ood = calibration.out_of_distribution
    if ood is not None:
        lines += [
            "",
            "## Out-of-distribution flags",
            "",
            f"A pixel is flagged (series 23) where the learned {quantity} differs from the model-based fit of the same "
            f"images (series 16) by more than the threshold below, relative to its value: the conformal "
            f"{1 - ood.level:g} quantile of that difference over every kept pixel of the calibration slices' head "
            f"(brain, CSF, fat, lesions), so at most about {100 * ood.level:g}% of such pixels are flagged; the "
            "check's flag rate is of the tissue pixels.",
            "",
            "| acceleration | threshold (relative difference) |",
            "|---|---|",
            *(f"| {a} | {t:.4f} |" for a, t in sorted(ood.thresholds.items())),
        ]
    if checks:
        lines += [
            "",
            "## Check on fresh slices",
            "",
            f"New slices of the same recipe (other seeds), replayed through `{calibration.chain}`: coverage is the "
            f"fraction of tissue pixels whose true {quantity} lies in the interval (target at least "
            f"{1 - calibration.alpha:g}); width is the mean full width "
            f"`{'2 λ SD' if head is None else 'λ (lower + upper)'} / {quantity}`.",
            "",
            *coverage_table(checks),
            "",
            f"All accelerations together: coverage {pooled_coverage(checks):.4f}.",
        ]
    if head is not None:
        lines += ["", *quantile_head_section(head)]
    lines += ["", "## Command", "", "```", calibration.command, "```", ""]
    return "\n".join(lines)


def quantile_head_section(source: str) -> list[str]:
    """Return the model card lines that say how the quantile head ``source`` was trained (its weights' record)."""
    training = quantile_head_training(source)
    recipe, settings = training["recipe"], training["settings"]
    seeds = sorted(s for file_seeds in recipe["file_seeds"].values() for s in file_seeds)
    command = (
        f"qmri train map-quantile-head --chain {training['chain']} --slices {recipe['n_slices']} "
        f"--alpha {settings['alpha']:g} --hidden {settings['hidden']} --epochs {settings['epochs']} "
        f"--batch {settings['batch']} --learning-rate {settings['learning_rate']:g} --init-seed {settings['seed']} "
        "--out RUN"
    )
    return [
        "## Quantile head",
        "",
        f"`{source}`: {recipe['n_slices']} slices per acceleration ({', '.join(map(str, training['accelerations']))}"
        f"), {recipe['matrix']}^2, seeds {seeds[0]}-{seeds[-1]} (raw files; never the calibration's), replayed "
        f"through `{training['chain']}`; {settings['epochs']} epochs of the pinball loss at "
        f"{settings['alpha'] / 2:g} and {1 - settings['alpha'] / 2:g} on the relative error of every kept object "
        f"pixel. Pinball loss {training['train_loss']:.5f} on the training slices, {training['held_out_loss']:.5f} "
        f"on the tenth held out; held-out coverage at λ = 1: {training['held_out_coverage']:.3f}.",
        "",
        "```",
        command,
        f"cp RUN/weights.pt qmri_models/pretrained/map_quantile_head_{training['chain']}.pt",
        "```",
    ]


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
