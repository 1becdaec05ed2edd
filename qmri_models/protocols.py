"""The mapping protocols: one name per protocol, read by the simulator, the chains' fit, the CLI and the DICOM writer.

A protocol (``molli``, ``t2prep``, ``ir`` ...) is a preparation-based acquisition whose phases differ in one
preparation time. Its :class:`ProtocolSpec` says which signal model maps it (by name in
``qmri_models.signal_models.MODELS``), the quantity it maps, its default preparation times, and its
:class:`Preparation`: the kind of magnetisation preparation, where an ISMRMRD header keeps its times and how DICOM
labels its images. Adding a protocol is one entry in :data:`PROTOCOLS` (and its model, if new).

Where the times live follows from the kind of time they are, so a header says which preparation it describes:
inversion times in ``sequenceParameters.TI``, T2-preparation durations and saturation times in the
``userParameterDouble`` lists :data:`T2PREP` and :data:`SATURATION` name (one entry per phase, ms, in phase order),
as Gadgetron's mapping protocols keep them. The module imports no torch, so the command line reads it cheaply.
"""

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal


@dataclass(frozen=True)
class Preparation:
    """A magnetisation preparation: where a header keeps its times and how DICOM labels the images it prepares."""

    name: str
    """``inversion``, ``saturation`` or ``t2prep``."""
    user_parameter: str | None
    """Name of the ``userParameterDouble`` list holding the times in ms; None: ``sequenceParameters.TI``."""
    scanning_sequence: tuple[str, ...]
    """DICOM Scanning Sequence (0018,0020) of a prepared image: ``IR`` only for an inversion; ``RM`` (research
    mode) for the readout, which the header does not name."""
    sequence_variant: tuple[str, ...]
    """DICOM Sequence Variant (0018,0021) of a prepared image: ``MP`` (magnetisation prepared)."""
    prep_time_attribute: str | None
    """DICOM keyword holding each prepared image's preparation time in ms (``InversionTime``), or None where the MR
    Image IOD has no attribute for it (saturation and T2-preparation times)."""


INVERSION = Preparation("inversion", None, ("IR", "RM"), ("MP",), "InversionTime")
"""A 180-degree inversion; times are inversion times (TI)."""
T2PREP = Preparation("t2prep", "T2PrepDuration_ms", ("RM",), ("MP",), None)
"""A T2 preparation (90-180...-90 train); times are its durations (echo times of the preparation)."""
SATURATION = Preparation("saturation", "SaturationTime_ms", ("RM",), ("MP",), None)
"""A 90-degree saturation; times are the delays from saturation to the readout (TS)."""
PREPARATIONS: tuple[Preparation, ...] = (T2PREP, SATURATION, INVERSION)
"""Every preparation, in the order a header is searched for its times: the named lists first, then TI."""


@dataclass(frozen=True)
class Readout:
    """The readout a simulated raw file of the protocol names in its ISMRMRD header."""

    sequence_name: str
    repetition_time_ms: float
    echo_time_ms: float
    flip_angle_deg: float


@dataclass(frozen=True)
class ProtocolSpec:
    """One mapping protocol: its name everywhere, model, preparation, default times and mapped quantity."""

    name: str
    """The one name of the protocol: simulator contrast, chain fit ``model``, ``qmri simulate`` choice."""
    description: str
    """What it is, for people (a few words)."""
    model: str
    """Signal model fitted to it, by name in ``qmri_models.signal_models.MODELS``."""
    preparation: Preparation
    prep_times_ms: tuple[float, ...]
    """Default preparation time of every phase in ms (what the simulator acquires)."""
    quantity: str
    """The map it is for (``T1``, ``T2``): the model's primary map."""
    unit: str
    """Unit of that map (UCUM)."""
    readout: Readout


MOLLI_TI_MS: tuple[float, ...] = (251.0, 400.0, 1251.0, 1400.0, 2251.0, 2400.0, 3251.0, 4251.0)
"""The 8 inversion times of the PUQ paper's MOLLI data, ms."""

T2PREP_TE_MS: tuple[float, ...] = (0.0, 25.0, 35.0, 45.0, 65.0, 85.0, 105.0, 125.0)
"""The 8 T2-preparation durations of the PUQ paper's T2 data, ms."""

IR_TI_MS: tuple[float, ...] = (50.0, 100.0, 250.0, 500.0, 850.0, 1500.0, 2500.0)
"""The 7 inversion times of the qMRI Diffusor paper's IR-FSE protocol, ms."""

SASHA_TS_MS: tuple[float, ...] = (10000.0, 100.0, 175.0, 250.0, 325.0, 400.0, 475.0, 550.0, 625.0, 700.0)
"""The 10 saturation times of a SASHA scan, ms: first the image without saturation pulse, at the anchor time
Gadgetron's T1 SR mapping gives it (``anchor_TS``, 10 s: fully recovered), then 9 saturation delays up to 700 ms, as
SASHA's (Chow et al., MRM 2014) spread over one cardiac cycle."""

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            name="molli",
            description="MOLLI T1",
            model="molli",
            preparation=INVERSION,
            prep_times_ms=MOLLI_TI_MS,
            quantity="T1",
            unit="ms",
            readout=Readout("molli", repetition_time_ms=2.5, echo_time_ms=1.1, flip_angle_deg=35.0),
        ),
        ProtocolSpec(
            name="t2prep",
            description="T2-prepared T2",
            model="t2prep",
            preparation=T2PREP,
            prep_times_ms=T2PREP_TE_MS,
            quantity="T2",
            unit="ms",
            readout=Readout("t2prep_bssfp", repetition_time_ms=2.5, echo_time_ms=1.1, flip_angle_deg=12.0),
        ),
        ProtocolSpec(
            name="ir",
            description="inversion-recovery T1, IR-FSE",
            model="inversion_recovery",
            preparation=INVERSION,
            prep_times_ms=IR_TI_MS,
            quantity="T1",
            unit="ms",
            readout=Readout("ir_fse", repetition_time_ms=10000.0, echo_time_ms=7.14, flip_angle_deg=90.0),
        ),
        ProtocolSpec(
            name="sasha",
            description="SASHA saturation-recovery T1",
            model="saturation_recovery",
            preparation=SATURATION,
            prep_times_ms=SASHA_TS_MS,
            quantity="T1",
            unit="ms",
            readout=Readout("sasha_bssfp", repetition_time_ms=2.7, echo_time_ms=1.2, flip_angle_deg=70.0),
        ),
    )
}
"""Every mapping protocol by its name."""

if TYPE_CHECKING:
    ProtocolName = str
else:
    ProtocolName = Literal[tuple(PROTOCOLS)]
"""A protocol's name: the ``Literal`` of :data:`PROTOCOLS`' names, so gadget properties list them as choices."""


def protocol_spec(name: str) -> ProtocolSpec:
    """Return the protocol called ``name``.

    Raises
    ------
    ValueError
        If no protocol has that name; the message lists the known ones.
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


def describe_protocols() -> str:
    """Return the protocols for a help text: ``molli (MOLLI T1), t2prep (T2-prepared T2), ...``."""
    return ", ".join(f"{spec.name} ({spec.description})" for spec in PROTOCOLS.values())


def header_preparation(user_parameters: Collection[str], *, has_ti: bool) -> Preparation | None:
    """Return the preparation whose times a header holds: a list of :data:`PREPARATIONS` first, then TI.

    Parameters
    ----------
    user_parameters : Names of the header's ``userParameterDouble`` entries.
    has_ti : The header's ``sequenceParameters.TI`` is not empty.

    Returns
    -------
    The first preparation whose times the header holds, or None when it holds none.
    """
    for preparation in PREPARATIONS:
        if preparation.user_parameter is None and has_ti:
            return preparation
        if preparation.user_parameter is not None and preparation.user_parameter in user_parameters:
            return preparation
    return None
