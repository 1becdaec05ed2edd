"""Buffering: collect one slice's readouts across all phases into zero-filled k-space.

When a slice is complete (``trigger``), following Gadgetron's AcquisitionAccumulateTriggerGadget, which triggers on a
change of the trigger dimension or at the end of the scan, and the header's ``encodingLimits``, which say how many
phases to expect:

- ``auto`` (the default) closes a slice at its ``ACQ_LAST_IN_SLICE`` readout once every phase the header promises
  (in ``phase_dimension``) has arrived, so scanners that flag the last readout of every phase image work too; on a
  change of slice index while the stream sets no last-in-slice flags (sequential slices), unless the slices are
  interleaved (a slice index reappears after another one), when slices wait for their flags or the end of the scan;
  and everything still open at ``ACQ_LAST_IN_MEASUREMENT`` or the end of the stream. Without an encoding limit for
  the phase dimension it falls back to ``last_in_slice`` and says so in the log.
- ``last_in_slice``: at a slice's first ``ACQ_LAST_IN_SLICE`` readout; later readouts of the slice start a new one.
- ``slice_change``: when the slice index changes, and at the end of the scan.
- ``end_of_stream``: every slice at the end of the stream.

The convention a stream used is logged once, for people. A readout for a slice that was already closed is an error
that names the convention and the trigger that would work, never silently lost data.

What the gadget holds is bounded (DESIGN.md, Trust): readouts per slice (``slice_readout_margin`` times what the
header's encodingLimits promise), open slices (``open_slice_margin`` times the header's slices), bytes held
(``max_buffer_mb``, since a client can lie in its header). A cap that is exceeded raises a ValueError naming the
data, the cap, its value and the property to raise. Noise readouts are skipped: NoiseAdjustGadget, ahead of the
buffer, uses them (``gadgets.noise``).
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import ismrmrd
import numpy as np
from gadgetron.types.recon_data import ReconData

from gadgets.gadgetron_types import recon_data_to_slice_buffers
from gadgets.items import SliceBuffer, SliceContext
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, of_types, register
from qmri_models.protocols import PREPARATIONS, header_preparation

log = logging.getLogger(__name__)

PhaseDimension = Literal["set", "contrast", "phase", "repetition", "average", "segment", "none"]
Trigger = Literal["auto", "last_in_slice", "slice_change", "end_of_stream"]

NON_CARTESIAN_TRAJECTORIES = frozenset({"radial", "goldenangle", "spiral"})
"""Header trajectories (``encoding.trajectory``) that the Cartesian buffer refuses."""

_NEEDS_CARTESIAN = "AcquisitionBufferGadget needs Cartesian readouts; the mrf_fisp chain reconstructs spiral MRF"
_OTHER_COUNTERS = ("average", "contrast", "phase", "repetition", "set", "segment")
"""Encoding counters (besides lines and partitions) whose limits multiply the readouts a slice may hold."""
_BYTES_PER_MB = 1e6


@dataclass(frozen=True)
class AcquisitionBufferConfig(GadgetConfig):
    """Properties of AcquisitionBufferGadget."""

    phase_dimension: PhaseDimension = prop(
        "set", "encoding counter holding the phase index (Gadgetron's N_dimension); none merges all readouts"
    )
    trigger: Trigger = prop(
        "auto",
        "when a slice is complete: auto (its ACQ_LAST_IN_SLICE once every phase the header's encodingLimits promise "
        "has arrived; a change of slice index when the stream sets no such flag; the end of the scan), "
        "last_in_slice (its first ACQ_LAST_IN_SLICE), slice_change (a change of slice index) or end_of_stream",
    )
    prep_time_from_protocol: bool = prop(
        True, "preparation times from the protocol (TI list or the named user parameter); false: user_int[7] in us"
    )
    prep_time_user_parameter: str = prop(
        "",
        "name of the userParameterDouble list holding the preparation times in ms; empty: the protocol's list ("
        + ", ".join(p.user_parameter for p in PREPARATIONS if p.user_parameter is not None)
        + ") the header has, else sequenceParameters.TI",
    )
    slice_readout_margin: float = prop(
        2.0,
        "cap on the readouts buffered per slice, as a multiple of what the header's encodingLimits promise (lines x "
        "partitions x phases x averages x ...; room for separate calibration lines and repeats)",
        minimum=1.0,
        maximum=16.0,
        site=True,
    )
    open_slice_margin: float = prop(
        2.0,
        "cap on the slices open at once, as a multiple of the header's slice count",
        minimum=1.0,
        maximum=16.0,
        site=True,
    )
    max_buffer_mb: float = prop(
        1024.0,
        "most memory the buffered readouts and one slice's k-space may take, in MB (a 256^2, 32-coil, 8-phase "
        "slice fully sampled with 2x readout oversampling holds 268 MB)",
        minimum=1.0,
        maximum=8192.0,
        site=True,
    )


@register(
    "AcquisitionBufferGadget",
    AcquisitionBufferConfig,
    consumes=(ismrmrd.Acquisition, ReconData),
    produces=(SliceBuffer,),
)
def acquisition_buffer(connection: GadgetConnection) -> None:
    """Buffer each slice's readouts across phases and send it as one SliceBuffer (Gadgetron's ReconData: at once)."""
    config = AcquisitionBufferConfig.from_connection(connection)
    builder = SliceBufferBuilder(connection.header, config)
    connection.filter(of_types(ismrmrd.Acquisition, ReconData))
    for item in connection:
        done = builder.add(item) if isinstance(item, ismrmrd.Acquisition) else builder.from_recon_data(item)
        for buffer in done:
            connection.send(buffer)
    for remaining in builder.flush():
        connection.send(remaining)


@dataclass(frozen=True)
class HeaderLimits:
    """What the header's encodingLimits promise per slice and per scan, for the triggers and the caps."""

    n_phases: int | None
    """Phases promised in the phase dimension, or None when the header has no limit for it."""
    readouts_per_slice: int | None
    """Readouts one slice may hold at most by the header, or None without encodingLimits for the phase dimension."""
    terms: str
    """How ``readouts_per_slice`` is made up, for messages (``64 lines x 1 partitions x 8 phases in 'set'``)."""
    n_slices: int
    """Slices promised (1 when the header has no slice limit)."""

    @classmethod
    def from_encoding(cls, encoding: Any, phase_dimension: str) -> "HeaderLimits":
        """Return the limits of an ISMRMRD ``encoding`` for phases counted in ``phase_dimension``.

        Parameters
        ----------
        encoding : ``header.encoding[0]``.
        phase_dimension : The buffer's ``phase_dimension`` (``none``: one phase).
        """
        limits = encoding.encodingLimits
        if limits is None:
            return cls(None, None, "", 1)
        n_phases = 1 if phase_dimension == "none" else _count(getattr(limits, phase_dimension))
        n_slices = _count(limits.slice) or 1
        if n_phases is None:
            return cls(None, None, "", n_slices)
        lines = _count(limits.kspace_encoding_step_1) or max(int(encoding.encodedSpace.matrixSize.y), 1)
        partitions = _count(limits.kspace_encoding_step_2) or max(int(encoding.encodedSpace.matrixSize.z or 1), 1)
        factors = [(lines, "lines"), (partitions, "partitions")]
        if phase_dimension != "none":
            factors.append((n_phases, f"phases in '{phase_dimension}'"))
        factors += [
            (n, name)
            for name in _OTHER_COUNTERS
            if name != phase_dimension and (n := _count(getattr(limits, name)) or 1) > 1
        ]
        terms = " x ".join(f"{n} {name}" for n, name in factors)
        return cls(n_phases, math.prod(n for n, _ in factors), terms, n_slices)


def _count(limit: Any) -> int | None:
    """Return the values an encoding limit allows (``maximum + 1``, as Gadgetron counts), or None without one."""
    return None if limit is None else int(limit.maximum) + 1


@dataclass
class _OpenSlice:
    """The readouts of one slice still open, what they hold and what has arrived."""

    readouts: list[ismrmrd.Acquisition] = field(default_factory=list)
    phases: set[int] = field(default_factory=set)
    flagged: bool = False
    """An ACQ_LAST_IN_SLICE readout arrived before every promised phase had (per-phase flags)."""
    nbytes: int = 0


class SliceBufferBuilder:
    """Holds the readouts of the slices still open and decides, readout by readout, when a slice is complete.

    Parameters
    ----------
    header : The stream's parsed ISMRMRD header (``encoding[0]`` present).
    config : The gadget's properties.

    Raises
    ------
    ValueError
        If the header's trajectory is not Cartesian.
    """

    def __init__(self, header: Any, config: AcquisitionBufferConfig) -> None:
        encoding = header.encoding[0]
        trajectory = getattr(encoding.trajectory, "value", encoding.trajectory)
        if trajectory in NON_CARTESIAN_TRAJECTORIES:
            raise ValueError(f"the header's encoding trajectory is {trajectory}; {_NEEDS_CARTESIAN}")
        self._header = header
        self._config = config
        self._limits = HeaderLimits.from_encoding(encoding, config.phase_dimension)
        self._trigger: Trigger = config.trigger
        self._logged: set[str] = set()
        if config.trigger == "auto" and self._limits.n_phases is None:
            self._trigger = "last_in_slice"
            self._log_once(
                f"the header has no encodingLimits for '{config.phase_dimension}': slices close at their first "
                "ACQ_LAST_IN_SLICE readout (as trigger=last_in_slice) or at the end of the stream"
            )
        self._max_readouts = (
            None
            if self._limits.readouts_per_slice is None
            else math.ceil(config.slice_readout_margin * self._limits.readouts_per_slice)
        )
        if self._max_readouts is None:
            self._log_once("no encodingLimits for the phases: only max_buffer_mb bounds the readouts of a slice")
        self._max_open = max(1, math.ceil(config.open_slice_margin * self._limits.n_slices))
        self._max_bytes = config.max_buffer_mb * _BYTES_PER_MB
        self._open: dict[int, _OpenSlice] = {}
        self._closed: dict[int, str] = {}
        """Slice index -> how it was closed, for the triggers whose slices cannot reopen."""
        self._last_slice: int | None = None
        self._interleaved = False
        self._flags_seen = False
        self._held = 0

    @property
    def nbytes(self) -> int:
        """Bytes held: the open slices' readouts."""
        return self._held

    def add(self, acq: ismrmrd.Acquisition) -> list[SliceBuffer]:
        """Take one readout; return the buffers of the slices it completes (often none).

        Parameters
        ----------
        acq : The readout.

        Returns
        -------
        The completed slices' buffers, in the order they closed.

        Raises
        ------
        ValueError
            For a non-Cartesian readout, a readout of a slice already closed, or a cap exceeded.
        """
        if (
            acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            or acq.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA)
            or acq.is_flag_set(ismrmrd.ACQ_IS_PHASECORR_DATA)
        ):
            return []
        if acq.trajectory_dimensions > 0:
            raise ValueError(
                f"readout {acq.scan_counter} carries a {acq.trajectory_dimensions}-D k-space trajectory "
                f"(spiral or radial data); {_NEEDS_CARTESIAN}"
            )
        index = int(acq.idx.slice)
        done = self._on_slice_index(index, acq) if self._trigger in ("auto", "slice_change") else []
        slice_ = self._open.get(index)
        if slice_ is None:
            slice_ = self._open_slice(index, acq)
        self._append(index, slice_, acq)
        self._last_slice = index
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            closed = self._on_last_in_slice(index, slice_)
            if closed is not None:
                done.append(closed)
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) and self._trigger in ("auto", "slice_change"):
            done += [self._close(s, "at the end of the scan (ACQ_LAST_IN_MEASUREMENT)") for s in sorted(self._open)]
        return done

    def from_recon_data(self, recon_data: ReconData) -> list[SliceBuffer]:
        """Return the slices of a Gadgetron ``ReconData`` (BucketToBufferGadget's, N the phases) as SliceBuffers.

        Gadgetron has already buffered and triggered them; the preparation times follow this gadget's properties.
        """
        return recon_data_to_slice_buffers(
            recon_data, self._header, lambda header, references: phase_prep_times_ms(header, references, self._config)
        )

    def flush(self) -> list[SliceBuffer]:
        """Return the buffers of every slice still open (end of stream), in slice order."""
        return [self._close(s, "at the end of the stream") for s in sorted(self._open)]

    def _log_once(self, message: str, *, key: str | None = None) -> None:
        """Log ``message`` unless this stream logged it (or another message of the same ``key``) already."""
        key = message if key is None else key
        if key not in self._logged:
            self._logged.add(key)
            log.info("AcquisitionBufferGadget: %s", message)

    def _on_slice_index(self, index: int, acq: ismrmrd.Acquisition) -> list[SliceBuffer]:
        """Apply the slice-index rules of ``auto`` and ``slice_change``: refuse closed slices, close on a change."""
        how = self._closed.get(index)
        if how is not None:
            raise ValueError(
                f"readout {acq.scan_counter} belongs to slice {index}, which was already closed ({how}; "
                f"trigger={self._config.trigger}); set the buffer's trigger=end_of_stream to keep every slice open "
                "until the end of the scan"
            )
        previous = self._last_slice
        if previous is None or previous == index or previous not in self._open:
            return []
        if index in self._open:
            if not self._interleaved:
                self._interleaved = True
                self._log_once(
                    f"interleaved slices (slice {index} reappeared after slice {previous}): slices close at their "
                    "last-in-slice flags or at the end of the scan",
                    key="interleaved",
                )
            return []
        if self._trigger == "slice_change":
            return [self._close(previous, "on a change of slice index")]
        complete = self._limits.n_phases is not None and self._missing_phases(self._open[previous]) == []
        if not self._interleaved and not self._flags_seen and complete:
            return [self._close(previous, "on a change of slice index: this stream sets no last-in-slice flags")]
        return []

    def _on_last_in_slice(self, index: int, slice_: _OpenSlice) -> SliceBuffer | None:
        """Apply an ACQ_LAST_IN_SLICE readout: close its slice when the trigger says so."""
        self._flags_seen = True
        if self._trigger == "last_in_slice":
            return self._close(index, "at their first ACQ_LAST_IN_SLICE readout (trigger=last_in_slice)")
        if self._trigger != "auto":
            return None
        missing = self._missing_phases(slice_)
        if not missing:
            if slice_.flagged:
                how = (
                    f"by per-phase ACQ_LAST_IN_SLICE flags, each at the flag after all {self._limits.n_phases} "
                    f"phases in '{self._config.phase_dimension}' have arrived"
                )
            else:
                how = "by ACQ_LAST_IN_SLICE on their last readout"
            return self._close(index, how)
        if not slice_.flagged:
            slice_.flagged = True
            self._log_once(
                f"slice {index}: ACQ_LAST_IN_SLICE before phases {_shown(missing)} of the header's "
                f"{self._limits.n_phases} in '{self._config.phase_dimension}' arrived; the slice stays open for "
                "them (per-phase flags)",
                key="per-phase flag",
            )
        return None

    def _missing_phases(self, slice_: _OpenSlice) -> list[int]:
        return [p for p in range(self._limits.n_phases or 0) if p not in slice_.phases]

    def _open_slice(self, index: int, acq: ismrmrd.Acquisition) -> _OpenSlice:
        if len(self._open) >= self._max_open:
            raise ValueError(
                f"readout {acq.scan_counter} opens slice {index} while {len(self._open)} slices are open "
                f"(slices {_shown(sorted(self._open))}), more than the cap of {self._max_open} "
                f"(open_slice_margin={self._config.open_slice_margin:g} x the header's {self._limits.n_slices} "
                f"slices) and trigger={self._config.trigger} closed none of them; raise open_slice_margin"
            )
        slice_ = self._open[index] = _OpenSlice()
        return slice_

    def _append(self, index: int, slice_: _OpenSlice, acq: ismrmrd.Acquisition) -> None:
        """Add a readout to its open slice, within the caps on readouts per slice and on bytes held."""
        if self._max_readouts is not None and len(slice_.readouts) >= self._max_readouts:
            raise ValueError(
                f"slice {index}: readout {acq.scan_counter} would be its readout number {len(slice_.readouts) + 1}, "
                f"more than the cap of {self._max_readouts} readouts per slice (slice_readout_margin="
                f"{self._config.slice_readout_margin:g} x the {self._limits.readouts_per_slice} that the header's "
                f"encodingLimits promise: {self._limits.terms}) and trigger={self._config.trigger} has not closed "
                "the slice; raise slice_readout_margin if the header undercounts"
            )
        nbytes = acq.active_channels * acq.number_of_samples * 8 + acq.traj.nbytes
        self._check_bytes(nbytes, f"slice {index}: readout {acq.scan_counter}")
        slice_.readouts.append(acq)
        slice_.phases.add(self._phase_of(acq))
        slice_.nbytes += nbytes
        self._held += nbytes

    def _check_bytes(self, extra: int, what: str) -> None:
        """Raise if holding ``extra`` more bytes would pass ``max_buffer_mb``."""
        if self._held + extra > self._max_bytes:
            n_readouts = sum(len(s.readouts) for s in self._open.values())
            raise ValueError(
                f"{what} would make the buffer hold {(self._held + extra) / _BYTES_PER_MB:.1f} MB "
                f"({n_readouts} readouts of {len(self._open)} open slices), "
                f"more than max_buffer_mb={self._config.max_buffer_mb:g}; raise max_buffer_mb"
            )

    def _close(self, index: int, how: str) -> SliceBuffer:
        """Close an open slice, remember how (if it cannot reopen), log the convention once, and build it."""
        slice_ = self._open[index]
        buffer = self._build(index, slice_.readouts)
        del self._open[index]
        self._held -= slice_.nbytes
        if self._trigger in ("auto", "slice_change"):
            self._closed[index] = how
        self._log_once(f"slices closed {how}")
        return buffer

    def _phase_of(self, acq: ismrmrd.Acquisition) -> int:
        dimension = self._config.phase_dimension
        return 0 if dimension == "none" else int(getattr(acq.idx, dimension))

    def _build(self, slice_index: int, readouts: list[ismrmrd.Acquisition]) -> SliceBuffer:
        encoding = self._header.encoding[0]
        n_phases = max(self._phase_of(a) for a in readouts) + 1
        n_coils = readouts[0].active_channels
        n_x = max(int(encoding.encodedSpace.matrixSize.x), readouts[0].number_of_samples)
        limits = encoding.encodingLimits
        n_y = int(encoding.encodedSpace.matrixSize.y)
        if limits is not None and limits.kspace_encoding_step_1 is not None:
            n_y = max(n_y, int(limits.kspace_encoding_step_1.maximum) + 1)
        kdata_bytes = n_phases * n_coils * n_y * n_x * np.dtype(np.complex64).itemsize
        self._check_bytes(
            kdata_bytes, f"slice {slice_index}'s k-space ({n_phases} phases x {n_coils} coils x {n_y} x {n_x})"
        )
        kdata = np.zeros((n_phases, n_coils, n_y, n_x), dtype=np.complex64)
        sampled = np.zeros((n_phases, n_y), dtype=bool)
        headers = np.full((n_phases, n_y), None, dtype=object)
        calibration: set[int] = set()
        references: dict[int, ismrmrd.Acquisition] = {}
        for acq in readouts:
            phase, line = self._phase_of(acq), int(acq.idx.kspace_encode_step_1)
            if acq.active_channels != n_coils or not 0 <= line < n_y:
                raise ValueError(
                    f"slice {slice_index}: readout {acq.scan_counter} has {acq.active_channels} coils and line {line}, "
                    f"expected {n_coils} coils and lines 0..{n_y - 1}"
                )
            start = n_x // 2 - acq.center_sample
            if start < 0 or start + acq.number_of_samples > n_x:
                raise ValueError(
                    f"slice {slice_index}: readout {acq.scan_counter} has {acq.number_of_samples} samples centred at "
                    f"{acq.center_sample}, which do not fit the slice's {n_x}-sample readout"
                )
            kdata[phase, :, line, start : start + acq.number_of_samples] = acq.data
            sampled[phase, line] = True
            headers[phase, line] = acq.getHead()
            references.setdefault(phase, acq)
            if acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) or acq.is_flag_set(
                ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
            ):
                calibration.add(line)
        missing = [p for p in range(n_phases) if p not in references]
        if missing:
            hint = (
                "; if the scanner flags the last readout of every phase, use trigger=auto"
                if self._trigger == "last_in_slice"
                else ""
            )
            raise ValueError(
                f"slice {slice_index}: no readouts for phases {missing} in '{self._config.phase_dimension}'{hint}"
            )
        recon = encoding.reconSpace
        return SliceBuffer(
            kdata=kdata,
            sampled=sampled,
            calibration_lines=np.array(sorted(calibration), dtype=int),
            prep_times_ms=phase_prep_times_ms(self._header, [references[p] for p in range(n_phases)], self._config),
            context=SliceContext(
                slice_index,
                [references[p] for p in range(n_phases)],
                (recon.fieldOfView_mm.x, recon.fieldOfView_mm.y, recon.fieldOfView_mm.z),
            ),
            recon_matrix=(int(recon.matrixSize.y), int(recon.matrixSize.x)),
            readout_headers=headers,
        )


def phase_prep_times_ms(header: Any, references: list[Any], config: AcquisitionBufferConfig) -> np.ndarray:
    """Return each phase's preparation time in ms, from the protocol or from ``user_int[7]`` (us).

    Parameters
    ----------
    header : The stream's ISMRMRD header.
    references : The first readout (or image) header of every phase, in phase order.
    config : The buffer's properties that say where the times are (``prep_time_from_protocol``,
        ``prep_time_user_parameter``).

    Returns
    -------
    Preparation times in ms. Shape `(phases,)`.

    Raises
    ------
    ValueError
        If the protocol lists fewer times than there are phases.
    """
    n_phases = len(references)
    from_readouts = np.array([ref.user_int[7] / 1000.0 for ref in references])
    if not config.prep_time_from_protocol:
        return from_readouts
    protocol = _protocol_prep_times(header, config.prep_time_user_parameter)
    if protocol is None:
        log.info("no preparation times in the protocol; using each readout's user_int[7]")
        return from_readouts
    if len(protocol) < n_phases:
        raise ValueError(
            f"the protocol lists {len(protocol)} preparation times but the data has {n_phases} phases; "
            "set prep_time_from_protocol=false to read them from user_int[7]"
        )
    return np.asarray(protocol[:n_phases], dtype=float)


def _protocol_prep_times(header: Any, user_parameter: str) -> list[float] | None:
    """Return the protocol's preparation times, or None when the header has none.

    From the user parameter list ``user_parameter`` names; unnamed, from the list of the preparation the header
    describes (``qmri_models.protocols.header_preparation``); else from ``sequenceParameters.TI``.
    """
    user = header.userParameters
    lists: dict[str, list[float]] = {}
    for parameter in user.userParameterDouble if user is not None else []:
        lists.setdefault(parameter.name, []).append(parameter.value)
    sequence = header.sequenceParameters
    ti = list(sequence.TI) if sequence is not None and sequence.TI else []
    name = user_parameter
    if not name:
        preparation = header_preparation(lists, has_ti=bool(ti))
        name = (preparation.user_parameter if preparation is not None else None) or ""
    return lists.get(name) or ti or None


def _shown(values: list[int], most: int = 8) -> str:
    """Return a short list for a message: ``[1, 2, 3]`` or ``[1, 2, ... (12 in all)]``."""
    if len(values) <= most:
        return str(values)
    return "[" + ", ".join(map(str, values[:most])) + f", ... ({len(values)} in all)]"
