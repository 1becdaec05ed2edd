"""Buffering: collect one slice's readouts across all phases into zero-filled k-space."""

import logging
from dataclasses import dataclass
from typing import Any, Literal

import ismrmrd
import numpy as np

from gadgets.items import SliceBuffer
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register

log = logging.getLogger(__name__)

PhaseDimension = Literal["set", "contrast", "phase", "repetition", "average", "segment", "none"]


@dataclass(frozen=True)
class AcquisitionBufferConfig(GadgetConfig):
    """Properties of AcquisitionBufferGadget."""

    phase_dimension: PhaseDimension = prop(
        "set", "encoding counter holding the phase index (Gadgetron's N_dimension); none merges all readouts"
    )
    trigger: Literal["last_in_slice", "end_of_stream"] = prop(
        "last_in_slice", "when a slice is complete: its ACQ_LAST_IN_SLICE readout, or the end of the stream"
    )
    prep_time_from_protocol: bool = prop(
        True, "preparation times from the protocol (TI list or the named user parameter); false: user_int[7] in us"
    )
    prep_time_user_parameter: str = prop(
        "T2PrepDuration_ms", "name of the userParameterDouble list holding the preparation times in ms"
    )


@register("AcquisitionBufferGadget", AcquisitionBufferConfig)
def acquisition_buffer(connection: GadgetConnection) -> None:
    """Buffer each slice's readouts across phases and send it as one SliceBuffer."""
    config = AcquisitionBufferConfig.from_connection(connection)
    builder = _BufferBuilder(connection.header, config)
    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition):
            connection.send(item)
            continue
        done = builder.add(item)
        if done is not None:
            connection.send(done)
    for remaining in builder.flush():
        connection.send(remaining)


class _BufferBuilder:
    """Holds the readouts of the slices still open; at most one slice per trigger when scanning in order."""

    def __init__(self, header: Any, config: AcquisitionBufferConfig) -> None:
        self._header = header
        self._config = config
        self._slices: dict[int, list[ismrmrd.Acquisition]] = {}
        self._noise: list[np.ndarray] = []

    def add(self, acq: ismrmrd.Acquisition) -> SliceBuffer | None:
        """Take one readout; return the slice's buffer when its trigger arrives."""
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._noise.append(np.array(acq.data, dtype=np.complex64))
            return None
        if acq.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA) or acq.is_flag_set(ismrmrd.ACQ_IS_PHASECORR_DATA):
            return None
        slice_index = int(acq.idx.slice)
        self._slices.setdefault(slice_index, []).append(acq)
        if self._config.trigger == "last_in_slice" and acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            return self._build(slice_index, self._slices.pop(slice_index))
        return None

    def flush(self) -> list[SliceBuffer]:
        """Return the buffers of every slice still open (end of stream), in slice order."""
        return [self._build(s, self._slices.pop(s)) for s in sorted(self._slices)]

    def _phase_of(self, acq: ismrmrd.Acquisition) -> int:
        dimension = self._config.phase_dimension
        return 0 if dimension == "none" else int(getattr(acq.idx, dimension))

    def _build(self, slice_index: int, readouts: list[ismrmrd.Acquisition]) -> SliceBuffer:
        encoding = self._header.encoding[0]
        n_phases = max(self._phase_of(a) for a in readouts) + 1
        n_coils = readouts[0].active_channels
        n_x = max(int(encoding.encodedSpace.matrixSize.x), readouts[0].number_of_samples)
        limits = encoding.encodingLimits.kspace_encoding_step_1
        n_y = int(encoding.encodedSpace.matrixSize.y)
        if limits is not None:
            n_y = max(n_y, int(limits.maximum) + 1)
        kdata = np.zeros((n_phases, n_coils, n_y, n_x), dtype=np.complex64)
        sampled = np.zeros((n_phases, n_y), dtype=bool)
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
            kdata[phase, :, line, start : start + acq.number_of_samples] = acq.data
            sampled[phase, line] = True
            references.setdefault(phase, acq)
            if acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) or acq.is_flag_set(
                ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
            ):
                calibration.add(line)
        missing = [p for p in range(n_phases) if p not in references]
        if missing:
            raise ValueError(
                f"slice {slice_index}: no readouts for phases {missing} in '{self._config.phase_dimension}'"
            )
        recon = encoding.reconSpace
        return SliceBuffer(
            kdata=kdata,
            sampled=sampled,
            calibration_lines=np.array(sorted(calibration), dtype=int),
            prep_times_ms=self._prep_times(n_phases, [references[p] for p in range(n_phases)]),
            slice=slice_index,
            references=[references[p] for p in range(n_phases)],
            recon_matrix=(int(recon.matrixSize.y), int(recon.matrixSize.x)),
            field_of_view_mm=(recon.fieldOfView_mm.x, recon.fieldOfView_mm.y, recon.fieldOfView_mm.z),
            noise=np.stack(self._noise) if self._noise else None,
        )

    def _prep_times(self, n_phases: int, references: list[ismrmrd.Acquisition]) -> np.ndarray:
        """Return each phase's preparation time in ms, from the protocol or from user_int[7] (us)."""
        from_readouts = np.array([ref.user_int[7] / 1000.0 for ref in references])
        if not self._config.prep_time_from_protocol:
            return from_readouts
        protocol = self._protocol_prep_times()
        if protocol is None:
            log.info("no preparation times in the protocol; using each readout's user_int[7]")
            return from_readouts
        if len(protocol) < n_phases:
            raise ValueError(
                f"the protocol lists {len(protocol)} preparation times but the data has {n_phases} phases; "
                "set prep_time_from_protocol=false to read them from user_int[7]"
            )
        return np.asarray(protocol[:n_phases], dtype=float)

    def _protocol_prep_times(self) -> list[float] | None:
        """Return the protocol's preparation times (named user parameter list, else sequenceParameters.TI)."""
        user = self._header.userParameters
        if user is not None:
            named = [p.value for p in user.userParameterDouble if p.name == self._config.prep_time_user_parameter]
            if named:
                return named
        sequence = self._header.sequenceParameters
        if sequence is not None and sequence.TI:
            return list(sequence.TI)
        return None
