"""Write simulated scans as ISMRMRD raw files that follow Gadgetron's conventions, truth alongside.

Conventions (DESIGN.md): the phase index is in ``idx.set``; preparation times (ms) are where the protocol's
preparation keeps them (``qmri_models.protocols``): inversion times in ``sequenceParameters.TI``, T2-prep durations
and saturation times in a ``userParameterDouble`` list (``T2PrepDuration_ms``, ``SaturationTime_ms``), one entry
per phase in order; each readout also has its preparation time in ``user_int[7]`` (us); calibration lines are flagged
``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``; a noise scan comes first (``ACQ_IS_NOISE_MEASUREMENT``, read with
``NOISE_DWELL_RATIO`` times the imaging dwell in ``sample_time_us``, as a noise adjustment reads the bandwidth ratio
from them; ``relativeReceiverNoiseBandwidth`` is 1: the simulated receiver has no filter roll-off); the last readout
of a slice is flagged ``ACQ_LAST_IN_SLICE``. The truth goes in the HDF5 group ``/truth``, next to the ISMRMRD group.
"""

import datetime
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np
from xsdata.models.datatype import XmlDate, XmlTime

from qmri_models.ismrmrd_hdf5 import acquisition_rows, append_rows, write_header
from qmri_models.protocols import protocol_spec
from qmri_models.simulation.sampling import acs_lines
from qmri_models.simulation.scan import NOISE_DWELL_RATIO, ScanSettings, SimulatedSlice
from qmri_models.simulation.tissues import ParameterMaps

TRUTH_GROUP = "truth"
"""HDF5 group of the raw file that holds the simulator's ground truth."""

SAMPLE_TIME_US = 2.5
"""Dwell time of the imaging readouts in us (the noise scan's is ``NOISE_DWELL_RATIO`` times it)."""


def ismrmrd_header(settings: ScanSettings) -> ismrmrd.xsd.ismrmrdHeader:
    """Return the ISMRMRD header of a simulated scan.

    Parameters
    ----------
    settings : Scan settings.

    Returns
    -------
    The parsed header object (``toXML()`` gives the text).
    """
    xsd = ismrmrd.xsd
    n = settings.matrix
    n_phases = len(settings.prep_times)
    fov = xsd.fieldOfViewMm(x=settings.fov_mm, y=settings.fov_mm, z=settings.slice_thickness_mm)
    space = xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=n, y=n, z=1), fieldOfView_mm=fov)
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=n - 1, center=n // 2),
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=n - 1, center=n // 2),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
        slice=xsd.limitType(minimum=0, maximum=settings.n_slices - 1, center=0),
        set=xsd.limitType(minimum=0, maximum=n_phases - 1, center=0),
    )
    parallel = xsd.parallelImagingType(
        accelerationFactor=xsd.accelerationFactorType(
            kspace_encoding_step_1=settings.acceleration, kspace_encoding_step_2=1
        ),
        calibrationMode=xsd.calibrationModeType("embedded") if settings.acceleration > 1 else None,
    )
    encoding = xsd.encodingType(
        encodedSpace=space,
        reconSpace=space,
        encodingLimits=limits,
        trajectory=xsd.trajectoryType("cartesian"),
        parallelImaging=parallel,
    )
    spec = protocol_spec(settings.contrast)
    list_name = spec.preparation.user_parameter
    sequence = xsd.sequenceParametersType(
        TR=[spec.readout.repetition_time_ms],
        TE=[spec.readout.echo_time_ms],
        TI=list(settings.prep_times) if list_name is None else [],
        flipAngle_deg=[spec.readout.flip_angle_deg],
    )
    user = xsd.userParametersType(
        userParameterDouble=[]
        if list_name is None
        else [xsd.userParameterDoubleType(name=list_name, value=t) for t in settings.prep_times]
    )
    return scan_header(
        seed=settings.seed,
        n_coils=settings.n_coils,
        protocol=f"qmri_sim_{settings.contrast}_{settings.phantom}_R{settings.acceleration}",
        sequence_name=spec.readout.sequence_name,
        body_part="BRAIN" if settings.phantom == "brain" else "PHANTOM",
        encoding=encoding,
        sequence=sequence,
        user=user,
    )


def scan_header(
    *,
    seed: int,
    n_coils: int,
    protocol: str,
    sequence_name: str,
    body_part: str,
    encoding: ismrmrd.xsd.encodingType,
    sequence: ismrmrd.xsd.sequenceParametersType,
    user: ismrmrd.xsd.userParametersType,
) -> ismrmrd.xsd.ismrmrdHeader:
    """Return the ISMRMRD header of a simulated scan from its scan-specific parts; the rest is the simulator's.

    Parameters
    ----------
    seed : The simulation seed (names the patient, study and measurement).
    n_coils : Receive channels.
    protocol : Protocol name.
    sequence_name : Sequence name.
    body_part : DICOM body part examined.
    encoding : The single encoding.
    sequence : Sequence parameters.
    user : User parameters.

    Returns
    -------
    The parsed header object (``toXML()`` gives the text).
    """
    xsd = ismrmrd.xsd
    now = datetime.datetime.now()  # the study happens when it is simulated
    return xsd.ismrmrdHeader(
        version=2,
        subjectInformation=xsd.subjectInformationType(patientName="Simulated^Phantom", patientID=f"SIM{seed:06d}"),
        studyInformation=xsd.studyInformationType(
            studyID=f"SIM{seed}",
            studyDescription="qmri simulation",
            studyDate=XmlDate.from_date(now.date()),
            studyTime=XmlTime.from_time(now.time().replace(microsecond=0)),
            bodyPartExamined=body_part,
        ),
        measurementInformation=xsd.measurementInformationType(
            measurementID=f"qmri_{seed}",
            patientPosition=xsd.patientPositionType("HFS"),
            protocolName=protocol,
            sequenceName=sequence_name,
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="qmri-gadgets",
            systemModel="simulator",
            systemFieldStrength_T=3.0,
            relativeReceiverNoiseBandwidth=1.0,
            receiverChannels=n_coils,
            institutionName="qmri-gadgets simulation",
        ),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_740_000),
        encoding=[encoding],
        sequenceParameters=sequence,
        userParameters=user,
    )


def slice_geometry(slice_index: int, n_slices: int, slice_thickness_mm: float) -> dict[str, tuple[float, float, float]]:
    """Return the position (mm) and direction cosines of one axial slice of a stack centred at isocentre.

    Slices are spaced by 1.5 slice thicknesses. The keys are the ``ismrmrd.Acquisition`` fields to set.
    """
    offset = (slice_index - (n_slices - 1) / 2) * slice_thickness_mm * 1.5
    return {
        "position": (0.0, 0.0, offset),
        "read_dir": (1.0, 0.0, 0.0),
        "phase_dir": (0.0, 1.0, 0.0),
        "slice_dir": (0.0, 0.0, 1.0),
    }


def _readouts(settings: ScanSettings, slices: list[SimulatedSlice]) -> list[ismrmrd.Acquisition]:
    """Return every readout of the scan in acquisition order: noise scan, then slice by slice, phase by phase."""
    n = settings.matrix
    calibration = set(acs_lines(n, settings.acs).tolist()) if settings.acceleration > 1 else set()
    prep_us = [round(t * 1000) for t in settings.prep_times]
    acquisitions: list[ismrmrd.Acquisition] = []

    def new(data: np.ndarray) -> ismrmrd.Acquisition:
        return new_readout(data, len(acquisitions), sample_time_us=SAMPLE_TIME_US)

    for noise_readout in slices[0].noise:
        acq = new_readout(noise_readout, len(acquisitions), sample_time_us=SAMPLE_TIME_US * NOISE_DWELL_RATIO)
        acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        acquisitions.append(acq)
    for s, sim in enumerate(slices):
        geometry = slice_geometry(s, settings.n_slices, settings.slice_thickness_mm)
        for p in range(len(settings.prep_times)):
            lines = np.flatnonzero(sim.sampled[p])
            for i, ky in enumerate(lines):
                acq = new(sim.kdata[p, :, ky, :])
                acq.center_sample = n // 2
                acq.idx.kspace_encode_step_1 = int(ky)
                acq.idx.set = p
                acq.idx.slice = s
                acq.user_int[7] = prep_us[p]
                for name, value in geometry.items():
                    getattr(acq, name)[:] = value
                if int(ky) in calibration:
                    acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
                if i == 0:
                    acq.set_flag(ismrmrd.ACQ_FIRST_IN_SET)
                    acq.set_flag(ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1)
                    if p == 0:
                        acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
                if i == len(lines) - 1:
                    acq.set_flag(ismrmrd.ACQ_LAST_IN_SET)
                    acq.set_flag(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1)
                    if p == len(settings.prep_times) - 1:
                        acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
                acquisitions.append(acq)
    acquisitions[-1].set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    return acquisitions


def new_readout(
    data: np.ndarray, counter: int, *, sample_time_us: float, traj: np.ndarray | None = None
) -> ismrmrd.Acquisition:
    """Return a readout holding ``data``, stamped with its place in the scan.

    Parameters
    ----------
    data : Samples of every coil. Shape `(coils, samples)`.
    counter : Position of the readout in the scan (``scan_counter`` and ``acquisition_time_stamp``).
    sample_time_us : Dwell time in us.
    traj : k-space position of every sample (sets ``trajectory_dimensions``), or None for none.
        Shape `(samples, dimensions)`.

    Returns
    -------
    The readout, all other header fields zero.
    """
    trajectory = None if traj is None else np.ascontiguousarray(traj, dtype=np.float32)
    acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, dtype=np.complex64), trajectory)
    acq.scan_counter = counter
    acq.acquisition_time_stamp = counter
    acq.sample_time_us = sample_time_us
    acq.available_channels = data.shape[0]
    return acq


def write_raw(path: Path, settings: ScanSettings, slices: list[SimulatedSlice], *, group: str = "dataset") -> None:
    """Write the simulated scan as an ISMRMRD HDF5 raw file, with its truth in ``/truth``.

    Parameters
    ----------
    path : Output file; replaced if it exists, its folder created if missing.
    settings : The settings the slices were simulated with.
    slices : The simulated slices, in slice order.
    group : ISMRMRD dataset group name.
    """
    with open_raw_file(path, ismrmrd_header(settings), _readouts(settings, slices), group=group) as f:
        _write_truth(f.create_group(TRUTH_GROUP), settings, slices)


@contextmanager
def open_raw_file(
    path: Path, header: ismrmrd.xsd.ismrmrdHeader, readouts: list[ismrmrd.Acquisition], *, group: str = "dataset"
) -> Iterator[h5py.File]:
    """Write an ISMRMRD HDF5 raw file's header and readouts, and yield the open file for the truth beside them.

    Parameters
    ----------
    path : Output file; replaced if it exists, its folder created if missing.
    header : ISMRMRD header.
    readouts : Readouts in acquisition order.
    group : ISMRMRD dataset group name.

    Yields
    ------
    The file, open for writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as f:
        raw = f.create_group(group)
        write_header(raw, header.toXML())
        append_rows(raw, "data", acquisition_rows(readouts))
        yield f


def write_truth_maps(group: h5py.Group, truths: Sequence[ParameterMaps]) -> None:
    """Write every slice's T1, T2 and PD maps, tissue labels and label names, as ``qmri evaluate`` reads them.

    Parameters
    ----------
    group : The raw file's ``/truth`` group; datasets ``t1_ms``, ``t2_ms``, ``pd`` and ``labels`` of shape
        `(slices, y, x)` and the attribute ``label_names`` are added.
    truths : Ground truth of each slice, in slice order.
    """
    group.create_dataset("t1_ms", data=np.stack([t.t1_ms for t in truths]), compression="gzip")
    group.create_dataset("t2_ms", data=np.stack([t.t2_ms for t in truths]), compression="gzip")
    group.create_dataset("pd", data=np.stack([t.pd for t in truths]), compression="gzip")
    group.create_dataset("labels", data=np.stack([t.labels for t in truths]), compression="gzip")
    group.attrs["label_names"] = list(truths[0].label_names)


def _write_truth(group: h5py.Group, settings: ScanSettings, slices: list[SimulatedSlice]) -> None:
    """Write the ground truth: maps, labels, noise-free images, coils, masks and the settings."""
    write_truth_maps(group, [s.truth for s in slices])
    group.create_dataset("images", data=np.stack([s.images for s in slices]), compression="gzip")
    group.create_dataset("coil_sensitivities", data=np.stack([s.sens for s in slices]), compression="gzip")
    group.create_dataset("sampled", data=np.stack([s.sampled for s in slices]))
    group.create_dataset("prep_times_ms", data=np.asarray(settings.prep_times))
    group.create_dataset("noise_sd", data=np.asarray([s.noise_sd for s in slices]))
    group.create_dataset("noise_covariance", data=slices[0].noise_covariance)
    for name in ("contrast", "matrix", "n_coils", "acceleration", "snr", "seed", "n_slices", "phantom", "noise"):
        group.attrs[name] = getattr(settings, name)
    group.attrs["acs_fraction"] = settings.acs
    group.attrs["inversion_efficiency"] = settings.inversion_efficiency
    group.attrs["images_description"] = "noise-free coil-combined images, (slices, phases, y, x) complex64"
