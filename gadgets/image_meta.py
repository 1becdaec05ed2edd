"""What an MRD image means, written to and read from its meta (``attribute_string``), with Gadgetron's keys.

This is the one module that spells the meta keys. Writers (the output gadgets) build an :class:`ImageMeaning` and
call :func:`set_meaning`; readers (DICOM, preview, evaluation) call :func:`meaning_of`. The keys and values are
those of Gadgetron's mapping gadgets, which scanner-side converters read:

- ``GADGETRON_DataRole``: what the pixels are (``Image``, ``T1``, ``T1SD``, ``T2`` ...);
- ``DataRole=Quantitative`` on maps, so converters do not rescale their values, with ``Units`` (UCUM, ``ms``);
- ``GADGETRON_SeqDescription`` (appended to the series description) and ``GADGETRON_ImageComment``;
- ``GADGETRON_WindowCenter`` / ``GADGETRON_WindowWidth``: the display window in the pixel unit;
- ``PhaseIndex`` and ``PrepTime_ms`` on the images of a multi-phase scan (phase, and its inversion or
  T2-preparation time in ms);
- on a bound of a calibrated interval (role ``T1Lower``, ``T1Upper`` ...: the quantity, then ``Lower`` or ``Upper``):
  ``IntervalBound`` (``lower`` or ``upper``), ``IntervalAlpha`` and ``IntervalDelta`` (the risk the interval controls
  and the probability that the calibration fails to), ``IntervalScale`` (lambda: the bounds are the value -+ lambda
  times its SD) and ``CalibrationID`` (the calibration file's id).

Numbers are written with 6 significant digits, as Gadgetron's gadgets write them, but for the calibration's numbers,
which are written in full (shortest exact form) so that a bound can be recomputed exactly from its map and SD. An
:class:`ImageMeaning` keeps its numbers at the precision the meta stores, so the meaning read back from an image
equals the one written to it.
"""

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal, get_args

import ismrmrd

ROLE_KEY = "GADGETRON_DataRole"
"""Meta key of what the pixels are: ``Image``, ``T1``, ``T1SD`` ..."""
DATA_ROLE_KEY = "DataRole"
"""Meta key whose value :data:`QUANTITATIVE` marks a map."""
QUANTITATIVE = "Quantitative"
"""Value of :data:`DATA_ROLE_KEY` that marks a quantitative map (values in the unit of :data:`UNITS_KEY`)."""
UNITS_KEY = "Units"
"""Meta key of the pixel unit (UCUM: ``ms`` ...)."""
SEQUENCE_DESCRIPTION_KEY = "GADGETRON_SeqDescription"
"""Meta key of the suffix of the series description."""
COMMENT_KEY = "GADGETRON_ImageComment"
"""Meta key of the image comment."""
WINDOW_CENTER_KEY = "GADGETRON_WindowCenter"
"""Meta key of the display window's centre, in the pixel unit."""
WINDOW_WIDTH_KEY = "GADGETRON_WindowWidth"
"""Meta key of the display window's width, in the pixel unit."""
PHASE_INDEX_KEY = "PhaseIndex"
"""Meta key of the phase of a multi-phase scan an image is of."""
PREP_TIME_KEY = "PrepTime_ms"
"""Meta key of a phase image's preparation time (inversion or T2-preparation), in ms."""
BOUND_KEY = "IntervalBound"
"""Meta key of which bound of a calibrated interval an image is: ``lower`` or ``upper``."""
ALPHA_KEY = "IntervalAlpha"
"""Meta key of the risk the interval controls: the tolerated expected fraction of pixels outside it."""
DELTA_KEY = "IntervalDelta"
"""Meta key of the probability that the calibration fails to control that risk."""
SCALE_KEY = "IntervalScale"
"""Meta key of the calibrated scale lambda: the bounds are the value -+ lambda times its SD."""
CALIBRATION_ID_KEY = "CalibrationID"
"""Meta key of the id of the calibration file the interval comes from."""

IMAGE_ROLE = "Image"
"""Role of an image whose meta names none."""
Bound = Literal["lower", "upper"]
"""Which bound of an interval an image is."""
BOUNDS: tuple[Bound, ...] = get_args(Bound)
_BOUND_SUFFIXES: dict[Bound, str] = {"lower": "Lower", "upper": "Upper"}
"""What a bound image's role appends to its quantity (``T1Lower``)."""
_SIGNIFICANT_DIGITS = 6
"""Significant digits of the numbers written to meta."""


def _stored(value: float) -> float:
    """Return a number as the meta stores it (its text read back)."""
    return float(_text(value))


def _text(value: float) -> str:
    """Return the meta text of a number: 6 significant digits, shortest form (``100``, ``180.123``)."""
    return f"{value:.{_SIGNIFICANT_DIGITS}g}"


def bound_role(quantity: str, bound: Bound) -> str:
    """Return the role of a bound image of a quantity: ``T1`` and ``lower`` give ``T1Lower``.

    Parameters
    ----------
    quantity : The quantity's role (``T1``, ``T2`` ...).
    bound : ``lower`` or ``upper``.

    Returns
    -------
    The role.
    """
    if bound not in _BOUND_SUFFIXES:
        raise ValueError(f"bound must be one of {BOUNDS}; got {bound!r}")
    return f"{quantity}{_BOUND_SUFFIXES[bound]}"


@dataclass(frozen=True)
class ImageMeaning:
    """What an image is, as its meta says (Gadgetron's keys; see the module docstring).

    Numbers are kept as the meta stores them (6 significant digits; the calibration's numbers in full), so a meaning
    read back from the meta written from it is equal to it.

    Raises
    ------
    ValueError
        If the window's centre is not finite or its width not positive and finite, the preparation time is not
        finite, the phase index is negative, the bound is neither ``lower`` nor ``upper`` or its role does not end in
        it (``Lower``, ``Upper``), alpha or delta is not in (0, 1), or the scale is not finite and >= 0.
    """

    role: str = IMAGE_ROLE
    """What the pixels are: ``Image``, ``T1``, ``T1SD`` ... (first value of the meta's role)."""
    is_map: bool = False
    """A quantitative map: pixel values are in ``units`` and must not be rescaled."""
    units: str = ""
    """Pixel unit (UCUM, e.g. ``ms``), or empty."""
    sequence_description: str = ""
    """Suffix appended to the protocol name in the series description, or empty."""
    comment: str = ""
    """Image comment, or empty."""
    window: tuple[float, float] | None = None
    """Display window ``(centre, width)`` in the pixel unit (width positive), or None."""
    phase_index: int | None = None
    """Phase of a multi-phase scan the image is of, or None."""
    prep_time_ms: float | None = None
    """Preparation time of a phase image (inversion or T2-preparation time) in ms, or None."""
    bound: Bound | None = None
    """Which bound of a calibrated interval the image is (its role is ``<quantity>Lower`` or ``...Upper``), or None."""
    alpha: float | None = None
    """Risk the interval controls: tolerated expected fraction of pixels outside it, in (0, 1), or None."""
    delta: float | None = None
    """Probability that the calibration fails to control that risk, in (0, 1), or None."""
    scale: float | None = None
    """Calibrated scale lambda: the bounds are the value -+ lambda times its SD, >= 0, or None."""
    calibration_id: str = ""
    """Id of the calibration file the interval comes from, or empty."""

    def __post_init__(self) -> None:
        """Check the numbers and keep them at the precision the meta stores."""
        if self.window is not None:
            centre, width = self.window
            if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
                raise ValueError(f"window must have a finite centre and a positive width; got {self.window}")
            object.__setattr__(self, "window", (_stored(centre), _stored(width)))
        if self.prep_time_ms is not None:
            if not math.isfinite(self.prep_time_ms):
                raise ValueError(f"prep_time_ms must be finite; got {self.prep_time_ms}")
            object.__setattr__(self, "prep_time_ms", _stored(self.prep_time_ms))
        if self.phase_index is not None and self.phase_index < 0:
            raise ValueError(f"phase_index must be at least 0; got {self.phase_index}")
        if self.bound is not None and not self.role.endswith(bound_role("", self.bound)):
            raise ValueError(
                f"the role of the {self.bound} bound must end in {bound_role('', self.bound)!r}; got {self.role!r}"
            )
        for name in ("alpha", "delta"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1); got {value}")
        if self.scale is not None and not 0.0 <= self.scale < math.inf:
            raise ValueError(f"scale must be finite and at least 0; got {self.scale}")

    @property
    def is_uncertainty(self) -> bool:
        """Whether this is an uncertainty (standard deviation) map: a map whose role ends in ``SD``."""
        return self.is_map and self.role.upper().endswith("SD")

    @property
    def quantity(self) -> str:
        """The mapped quantity, upper case; of an SD map or a bound, what it is of (``T1SD``, ``T1Lower``: ``T1``)."""
        role = self.role.upper().replace("*", "STAR")
        if self.bound is not None:
            return role.removesuffix(bound_role("", self.bound).upper())
        return role.removesuffix("SD").rstrip("_") if self.is_uncertainty else role


def meta_text(meaning: ImageMeaning) -> str:
    """Return the serialized ``ismrmrd.Meta`` that says what an image is.

    The role is always written; ``DataRole=Quantitative`` only for a map; every other key only when set (strings
    not empty, numbers not None), in the order Gadgetron's gadgets write them. Strings are read back stripped, so a
    meaning whose strings have no surrounding spaces reads back equal.

    Parameters
    ----------
    meaning : What the image is.

    Returns
    -------
    ISMRMRD Meta XML, as ``ismrmrd.Image.attribute_string`` holds it.
    """
    meta = ismrmrd.Meta({ROLE_KEY: meaning.role})
    if meaning.is_map:
        meta[DATA_ROLE_KEY] = QUANTITATIVE
    for key, text in (
        (SEQUENCE_DESCRIPTION_KEY, meaning.sequence_description),
        (COMMENT_KEY, meaning.comment),
        (UNITS_KEY, meaning.units),
    ):
        if text:
            meta[key] = text
    if meaning.phase_index is not None:
        meta[PHASE_INDEX_KEY] = str(meaning.phase_index)
    if meaning.prep_time_ms is not None:
        meta[PREP_TIME_KEY] = _text(meaning.prep_time_ms)
    if meaning.window is not None:
        meta[WINDOW_CENTER_KEY], meta[WINDOW_WIDTH_KEY] = (_text(value) for value in meaning.window)
    if meaning.bound is not None:
        meta[BOUND_KEY] = meaning.bound
    for key, number in ((ALPHA_KEY, meaning.alpha), (DELTA_KEY, meaning.delta), (SCALE_KEY, meaning.scale)):
        if number is not None:
            meta[key] = repr(float(number))
    if meaning.calibration_id:
        meta[CALIBRATION_ID_KEY] = meaning.calibration_id
    return meta.serialize()


def meaning_from_meta(text: str) -> ImageMeaning:
    """Return what a serialized ``ismrmrd.Meta`` says an image is; empty text gives the defaults.

    Of a key with several values the first counts. A window needs both keys and a positive width; one with a
    width of 0 or less counts as no window.

    Parameters
    ----------
    text : ISMRMRD Meta XML (an image's ``attribute_string``), or empty.

    Returns
    -------
    The image's role, units, descriptions, window, phase and preparation time, and the interval it bounds.

    Raises
    ------
    ValueError
        If the text is not XML, a window, preparation time, phase index or interval number in it is not a finite
        number (an integer for the phase index), the bound is neither ``lower`` nor ``upper``, or the interval's
        fields contradict each other (:class:`ImageMeaning`).
    """
    try:
        meta = ismrmrd.Meta.deserialize(text) if text else ismrmrd.Meta()
    except ET.ParseError as error:
        raise ValueError(f"image meta is not ISMRMRD Meta XML: {error}") from error

    def first(key: str) -> str:
        value = meta.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return "" if value is None else str(value).strip()

    def number(key: str) -> float | None:
        text = first(key)
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"image meta {key} must be a number; got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"image meta {key} must be a finite number; got {text!r}")
        return value

    phase = first(PHASE_INDEX_KEY)
    if phase and not (phase.isascii() and phase.isdigit()):
        raise ValueError(f"image meta {PHASE_INDEX_KEY} must be an integer of at least 0; got {phase!r}")
    bound = first(BOUND_KEY)
    if bound and bound not in BOUNDS:
        raise ValueError(f"image meta {BOUND_KEY} must be one of {', '.join(BOUNDS)}; got {bound!r}")
    centre, width = number(WINDOW_CENTER_KEY), number(WINDOW_WIDTH_KEY)
    return ImageMeaning(
        role=first(ROLE_KEY) or IMAGE_ROLE,
        is_map=first(DATA_ROLE_KEY) == QUANTITATIVE,
        units=first(UNITS_KEY),
        sequence_description=first(SEQUENCE_DESCRIPTION_KEY),
        comment=first(COMMENT_KEY),
        window=(centre, width) if centre is not None and width is not None and width > 0 else None,
        phase_index=int(phase) if phase else None,
        prep_time_ms=number(PREP_TIME_KEY),
        bound=next((b for b in BOUNDS if b == bound), None),
        alpha=number(ALPHA_KEY),
        delta=number(DELTA_KEY),
        scale=number(SCALE_KEY),
        calibration_id=first(CALIBRATION_ID_KEY),
    )


def meaning_of(image: ismrmrd.Image) -> ImageMeaning:
    """Return what an image's meta (``attribute_string``) says it is.

    Parameters
    ----------
    image : An MRD image.

    Returns
    -------
    The image's role, units, descriptions, window, phase and preparation time, and the interval it bounds.

    Raises
    ------
    ValueError
        As :func:`meaning_from_meta`.
    """
    return meaning_from_meta(image.attribute_string)


def set_meaning(image: ismrmrd.Image, meaning: ImageMeaning) -> None:
    """Write what an image is into its meta (``attribute_string``), replacing what was there.

    Parameters
    ----------
    image : An MRD image; changed in place.
    meaning : What it is.
    """
    image.attribute_string = meta_text(meaning)
