"""Calibration files: the calibrated interval scales of one chain's map, per acceleration, with their data recipe.

A file is the JSON of an ``IntervalCalibration``: which chain and quantity it was calibrated on, which uncertainty the
interval scales (``value +- scale * SD``), the risk it controls (alpha, delta, the bound), one ``Calibration`` per
acceleration factor, the recipe of the calibration data and the command that made it. Shipped files live in
``SHIPPED_DIR`` beside their model cards (Markdown, same stem); ``load_interval_calibration`` takes a shipped name
(the file stem, e.g. ``t1_molli``) or a path.
"""

import json
import os
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from qmri_models.calibration.bounds import BOUND_NAMES, BoundName
from qmri_models.calibration.out_of_distribution import OutOfDistribution
from qmri_models.calibration.risk_control import Calibration
from qmri_models.fitting.maps import SD_KINDS, SdKind
from qmri_models.shipped import shipped_or_path

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "calibration"
"""The shipped calibration files (``<name>.json``) and their model cards (``<name>.md``)."""

QuantityName = Literal["T1", "T2"]
"""The map quantities a calibration can cover (the maps' DataRole), in ms."""
QUANTITY_NAMES: tuple[QuantityName, ...] = get_args(QuantityName)
UncertaintyName = SdKind
"""The uncertainty an interval scales: the map's SD of that kind (series 12), ``qmri_models.fitting.maps.SdKind``."""
UNCERTAINTY_NAMES: tuple[UncertaintyName, ...] = SD_KINDS
UNCERTAINTY_WORDS: dict[UncertaintyName, str] = {
    "fit_sd": "the fit's SD",
    "mc_sd": "the SD over the MC samples' maps",
    "mc_sd_disagreement": "the SD over the MC samples' maps combined with the learned map's distance to the model fit",
}
"""Each uncertainty kind in words, for model cards."""

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A calibration id: letters, digits, ``_ . -`` (it travels in image meta and DICOM text)."""


def calibration_id(chain: str, uncertainty: str, alpha: float, delta: float, *, quantile_head: bool = False) -> str:
    """Return the id of a calibration of ``chain``'s ``uncertainty`` (through a quantile head) at ``alpha``, ``delta``.

    E.g. ``t1_molli-fit_sd-a0.1-d0.1``, ``t1_molli_puq-mc_sd_disagreement-quantiles-a0.1-d0.1``.
    """
    return f"{chain}-{uncertainty}{'-quantiles' if quantile_head else ''}-a{alpha:g}-d{delta:g}"


def _text(name: str, value: Any) -> str:
    """Return ``value`` when it is a non-empty string, else raise a ValueError naming the field."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"interval calibration field {name!r} must be a non-empty string, got {value!r}")
    return value


def _probability(name: str, value: Any) -> float:
    """Return ``value`` as a float when it is a number in (0, 1), else raise a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"interval calibration field {name!r} must be a number in (0, 1), got {value!r}")
    return float(value)


def _object(name: str, value: Any) -> dict[str, Any]:
    """Return ``value`` when it is a dict with string keys (a JSON object), else raise a ValueError naming ``name``."""
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    raise ValueError(f"{name} must be an object with string keys, got {value!r}")


def _acceleration(value: Any) -> int:
    """Return an acceleration key (an int, or its decimal string from JSON) as an int >= 1."""
    if isinstance(value, str) and value.isdecimal():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"interval calibration field 'scales' needs acceleration keys that are integers >= 1, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class IntervalCalibration:
    """The calibrated scales of the interval ``value +- scale * SD`` of one chain's map, per acceleration factor.

    Validated on construction (so also when read back from JSON): a ValueError names the bad field.
    """

    id: str
    """Unique name of the calibration (``calibration_id``), sent with the bound series."""
    chain: str
    """The chain it was calibrated on (e.g. ``t1_molli``)."""
    quantity: QuantityName
    """The map quantity (``QUANTITY_NAMES``): the interval's unit is the map's, ms."""
    uncertainty: UncertaintyName
    """Which uncertainty the interval scales (``UNCERTAINTY_NAMES``)."""
    alpha: float
    """Controlled risk: the tolerated expected fraction of tissue pixels outside the interval, in (0, 1)."""
    delta: float
    """Probability that the calibration draw fails to control the risk, in (0, 1)."""
    bound: BoundName
    """The upper confidence bound used (``bounds.BOUND_NAMES``)."""
    scales: dict[int, Calibration]
    """Per acceleration factor (phase-encoding undersampling), the calibrated scale and its evidence."""
    recipe: dict[str, Any]
    """The calibration data: matrix, coils, SNR, noise model, seeds, slices per acceleration, the mask (JSON-able)."""
    command: str
    """The command that made the file."""
    out_of_distribution: OutOfDistribution | None = None
    """For a learned map: the thresholds that flag pixels outside what the calibration saw; None otherwise."""
    structure_scales: dict[int, Calibration] | None = None
    """Per acceleration, the scale of the structure-level interval ``structure mean +- lambda * its mean voxel SD``
    (``qmri_models.structures.means``; one loss per slice: the fraction of its structures outside), or None."""
    quantile_head: str | None = None
    """The map quantile head whose offsets the pixel scale multiplies (a shipped name of
    ``qmri_models.pretrained.shipped_quantile_heads`` or a weights file), with the SD of ``uncertainty`` among its
    inputs; None: the scale multiplies the SD itself."""

    def __post_init__(self) -> None:
        for name in ("id", "chain", "command"):
            _text(name, getattr(self, name))
        if self.quantile_head is not None:
            _text("quantile_head", self.quantile_head)
        if not _ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"interval calibration field 'id' must match {_ID_PATTERN.pattern}, got {self.id!r}")
        if self.quantity not in QUANTITY_NAMES:
            raise ValueError(
                f"interval calibration field 'quantity' must be one of {QUANTITY_NAMES}, got {self.quantity!r}"
            )
        if self.uncertainty not in UNCERTAINTY_NAMES:
            raise ValueError(
                f"interval calibration field 'uncertainty' must be one of {UNCERTAINTY_NAMES}, got {self.uncertainty!r}"
            )
        for name in ("alpha", "delta"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        if self.bound not in BOUND_NAMES:
            raise ValueError(f"interval calibration field 'bound' must be one of {BOUND_NAMES}, got {self.bound!r}")
        object.__setattr__(self, "scales", self._checked_scales("scales", self.scales))
        _object("interval calibration field 'recipe'", self.recipe)
        try:
            json.dumps(self.recipe, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"interval calibration field 'recipe' must be JSON-able: {error}") from error
        if self.structure_scales is not None:
            object.__setattr__(
                self, "structure_scales", self._checked_scales("structure_scales", self.structure_scales)
            )
        if self.out_of_distribution is not None and not isinstance(self.out_of_distribution, OutOfDistribution):
            raise TypeError(
                "interval calibration field 'out_of_distribution' must be an OutOfDistribution or None, got "
                f"{type(self.out_of_distribution).__name__}"
            )

    def _checked_scales(self, name: str, scales: Any) -> dict[int, Calibration]:
        """Return a field of Calibrations by acceleration with int keys, after checking they match the file's risk."""
        if not isinstance(scales, dict) or not scales:
            raise ValueError(f"interval calibration field {name!r} must be a non-empty dict, got {scales!r}")
        checked = {_acceleration(key): value for key, value in scales.items()}
        for acceleration, calibration in checked.items():
            if not isinstance(calibration, Calibration):
                raise TypeError(
                    f"interval calibration field {name!r} needs a Calibration per acceleration, got "
                    f"{type(calibration).__name__} at {acceleration}"
                )
            for field_name in ("alpha", "delta", "bound"):
                if getattr(calibration, field_name) != getattr(self, field_name):
                    raise ValueError(
                        f"interval calibration field {name!r}: acceleration {acceleration} has {field_name} "
                        f"{getattr(calibration, field_name)!r}, the file {getattr(self, field_name)!r}"
                    )
        return checked

    @property
    def accelerations(self) -> tuple[int, ...]:
        """The calibrated acceleration factors, ascending."""
        return tuple(sorted(self.scales))

    def scale_for(self, acceleration: int) -> Calibration:
        """Return the calibration of exactly ``acceleration``; a ValueError names the calibrated ones otherwise."""
        if acceleration not in self.scales:
            raise ValueError(
                f"calibration {self.id!r} has no scale for acceleration {acceleration!r}; "
                f"it was calibrated at {list(self.accelerations)}"
            )
        return self.scales[acceleration]

    def to_dict(self) -> dict[str, Any]:
        """Return the calibration as a JSON-able dict (acceleration keys as decimal strings, as JSON keys must be)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["scales"] = {str(k): self.scales[k].to_dict() for k in self.accelerations}
        data["out_of_distribution"] = None if self.out_of_distribution is None else self.out_of_distribution.to_dict()
        data["structure_scales"] = (
            None
            if self.structure_scales is None
            else {str(k): v.to_dict() for k, v in sorted(self.structure_scales.items())}
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IntervalCalibration":
        """Return the calibration of a dict made by ``to_dict``; missing or unknown keys and bad fields are named.

        ``quantile_head`` may be absent (files written before quantile heads: the scale multiplies the SD).
        """
        _object("an interval calibration", data)
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data and name != "quantile_head"]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f"interval calibration: missing fields {missing}, unknown fields {unknown}")
        ood = data["out_of_distribution"]
        structure_scales = data["structure_scales"]
        return cls(
            **{
                **data,
                "scales": _parsed_scales("scales", data["scales"]),
                "out_of_distribution": None if ood is None else OutOfDistribution.from_dict(ood),
                "structure_scales": (
                    None if structure_scales is None else _parsed_scales("structure_scales", structure_scales)
                ),
            }
        )


def _parsed_scales(name: str, scales: Any) -> dict[int, Calibration]:
    """Return a JSON object of Calibrations by acceleration key as a dict; a bad entry is named."""
    scales = _object(f"interval calibration field {name!r}", scales)
    parsed: dict[int, Calibration] = {}
    for key, values in scales.items():
        acceleration = _acceleration(key)
        if acceleration in parsed:
            raise ValueError(f"interval calibration field {name!r} has acceleration {acceleration} twice")
        values = _object(f"interval calibration field {name!r} at acceleration {key}", values)
        try:
            parsed[acceleration] = Calibration.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"interval calibration field {name!r} at acceleration {key}: {error}") from error
    return parsed


def shipped_calibrations() -> dict[str, Path]:
    """Return the shipped calibration files by name (the file stem, e.g. ``t1_molli``)."""
    return {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.json"))}


def load_interval_calibration(name_or_path: str | Path) -> IntervalCalibration:
    """Return the calibration of a shipped name (``shipped_calibrations``) or else of a JSON file at that path.

    Raises
    ------
    FileNotFoundError
        If it is no shipped name and no file (the message lists the shipped names).
    ValueError
        If the file is no valid calibration (the message names the file and the field).
    """
    path = shipped_or_path(
        name_or_path, shipped_calibrations(), what="calibration file", made_by="a file written by `qmri calibrate`"
    )
    try:
        return IntervalCalibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def save_interval_calibration(calibration: IntervalCalibration, path: Path) -> None:
    """Write ``calibration`` as JSON to ``path`` under a temporary name in the same folder, then rename it."""
    text = json.dumps(calibration.to_dict(), indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        Path(partial).replace(path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
