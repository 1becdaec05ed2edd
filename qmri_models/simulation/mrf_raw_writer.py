"""Write simulated spiral MRF scans as ISMRMRD raw files that follow Gadgetron's conventions, truth alongside.

Readouts, in acquisition order: the noise scan (``ACQ_IS_NOISE_MEASUREMENT``, ``sample_time_us`` =
``NOISE_DWELL_RATIO`` times the design's dwell), then slice by slice one readout per
frame, as a scanner streams them. Each frame's readout carries

- ``data``: every coil's samples of that frame's spiral, `(coils, samples)`;
- ``traj``: the exact k-space position of every sample, ``trajectory_dimensions = 2``, ordered ``(kx, ky)`` and
  normalised to the matrix (cycles per FOV over ``matrix``, so ``|k| <= 0.5``), as Gadgetron's spiral gadgets store
  it. sigpy-convention coordinates are ``coord_from_ismrmrd_traj(traj, matrix)`` = ``traj[:, ::-1] * matrix``;
- ``idx.repetition`` = frame, ``idx.kspace_encode_step_1`` = interleaf of the fixed set (for golden-angle ordering
  the nearest one, a label only: ``traj`` is the truth), ``idx.slice``;
- ``center_sample`` = 0 (spirals start at the centre), ``sample_time_us`` = the design's dwell;
- flags ``ACQ_FIRST_IN_REPETITION`` and ``ACQ_LAST_IN_REPETITION`` (a frame is one readout),
  ``ACQ_FIRST_IN_SLICE`` on frame 0, ``ACQ_LAST_IN_SLICE`` on the last frame, ``ACQ_LAST_IN_MEASUREMENT`` on the
  last readout of the file.

Header: trajectory ``spiral`` with a ``trajectoryDescription`` of the design; encoded and reconstructed space are
the matrix; ``sequenceParameters`` hold the acquired frames' TR and flip angle lists and the TE and TI (ms, degrees).
``userParameters`` hold what the reconstruction needs to rebuild the dictionary exactly: the acquired schedule as
``FispSchedule.to_json`` in the string ``mrf_schedule`` (``qmri_models.mrf.schedule.schedule_from_header`` reads
it), the full schedule in ``mrf_schedule_full``, the ordering in ``mrf_ordering``, and the longs ``mrf_n_frames``,
``mrf_n_frames_full``, ``mrf_truncation`` and ``mrf_n_interleaves``. The truth goes in ``/truth``, the same layout
as the Cartesian files for the maps (``write_truth_maps``), so ``qmri evaluate`` scores T1 and T2 maps against it.
"""

from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np

from qmri_models.mrf.schedule import FULL_SCHEDULE_PARAMETER, SCHEDULE_PARAMETER
from qmri_models.simulation.mrf_scan import MrfScanSettings, SimulatedMrfSlice
from qmri_models.simulation.raw_writer import (
    TRUTH_GROUP,
    new_readout,
    open_raw_file,
    scan_header,
    slice_geometry,
    write_truth_maps,
)
from qmri_models.simulation.scan import NOISE_DWELL_RATIO
from qmri_models.simulation.spiral import ismrmrd_traj

TRAJECTORY_IDENTIFIER = "sigpy_vds_kim2003"
"""``trajectoryDescription.identifier``: sigpy's analytic variable-density spiral (Kim et al., MRM 2003)."""


def mrf_ismrmrd_header(settings: MrfScanSettings) -> ismrmrd.xsd.ismrmrdHeader:
    """Return the ISMRMRD header of a simulated spiral MRF scan.

    Parameters
    ----------
    settings : Scan settings.

    Returns
    -------
    The parsed header object (``toXML()`` gives the text).
    """
    xsd = ismrmrd.xsd
    n = settings.matrix
    design = settings.spiral
    n_samples = len(design.interleaf())
    schedule = settings.schedule
    fov = xsd.fieldOfViewMm(x=settings.fov_mm, y=settings.fov_mm, z=settings.slice_thickness_mm)
    space = xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=n, y=n, z=1), fieldOfView_mm=fov)
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=n_samples - 1, center=0),
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=settings.n_interleaves - 1, center=0),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
        slice=xsd.limitType(minimum=0, maximum=settings.n_slices - 1, center=0),
        repetition=xsd.limitType(minimum=0, maximum=settings.n_frames - 1, center=0),
    )
    trajectory = xsd.trajectoryDescriptionType(
        identifier=TRAJECTORY_IDENTIFIER,
        userParameterLong=[xsd.userParameterLongType(name="interleaves", value=design.n_interleaves)],
        userParameterDouble=[
            xsd.userParameterDoubleType(name=name, value=float(value))
            for name, value in (
                ("alpha", design.alpha),
                ("readout_undersampling", design.readout_undersampling),
                ("MaxGradient_mT_per_m", design.max_gradient_mt_per_m),
                ("MaxSlewRate_T_per_m_per_s", design.max_slew_t_per_m_per_s),
                ("SamplingTime_us", design.dwell_us()),
            )
        ],
        comment="traj holds (kx, ky) in cycles per FOV divided by the matrix size, |k| <= 0.5",
    )
    encoding = xsd.encodingType(
        encodedSpace=space,
        reconSpace=space,
        encodingLimits=limits,
        trajectory=xsd.trajectoryType("spiral"),
        trajectoryDescription=trajectory,
    )
    sequence = xsd.sequenceParametersType(
        TR=list(schedule.tr_ms),
        TE=[schedule.te_ms],
        TI=[schedule.ti_ms],
        flipAngle_deg=list(schedule.flip_angles_deg),
        sequence_type="FISP",
    )
    user = xsd.userParametersType(
        userParameterLong=[
            xsd.userParameterLongType(name=name, value=value)
            for name, value in (
                ("mrf_n_frames", settings.n_frames),
                ("mrf_n_frames_full", settings.n_frames_full),
                ("mrf_truncation", settings.truncation),
                ("mrf_n_interleaves", settings.n_interleaves),
            )
        ],
        userParameterString=[
            xsd.userParameterStringType(name=SCHEDULE_PARAMETER, value=schedule.to_json()),
            xsd.userParameterStringType(name=FULL_SCHEDULE_PARAMETER, value=settings.full_schedule.to_json()),
            xsd.userParameterStringType(name="mrf_ordering", value=settings.ordering),
        ],
    )
    return scan_header(
        seed=settings.seed,
        n_coils=settings.n_coils,
        protocol=f"qmri_sim_mrf_fisp_{settings.n_frames}of{settings.n_frames_full}_{settings.ordering}",
        sequence_name="mrf_fisp_spiral",
        body_part="BRAIN",
        encoding=encoding,
        sequence=sequence,
        user=user,
    )


def _readouts(settings: MrfScanSettings, slices: list[SimulatedMrfSlice]) -> list[ismrmrd.Acquisition]:
    """Return every readout of the scan in acquisition order: noise scan, then slice by slice, frame by frame."""
    dwell_us = settings.spiral.dwell_us()
    acquisitions: list[ismrmrd.Acquisition] = []
    for noise_readout in slices[0].noise:
        acq = new_readout(noise_readout, len(acquisitions), sample_time_us=dwell_us * NOISE_DWELL_RATIO)
        acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        acquisitions.append(acq)
    last_frame = settings.n_frames - 1
    for s, sim in enumerate(slices):
        geometry = slice_geometry(s, settings.n_slices, settings.slice_thickness_mm)
        traj = ismrmrd_traj(sim.coord, settings.matrix)
        for t in range(settings.n_frames):
            acq = new_readout(sim.readouts[t], len(acquisitions), sample_time_us=dwell_us, traj=traj[t])
            acq.center_sample = 0
            acq.idx.repetition = t
            acq.idx.kspace_encode_step_1 = int(sim.rotations.interleaf[t])
            acq.idx.slice = s
            for name, value in geometry.items():
                getattr(acq, name)[:] = value
            acq.set_flag(ismrmrd.ACQ_FIRST_IN_REPETITION)
            acq.set_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
            if t == 0:
                acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
            if t == last_frame:
                acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
            acquisitions.append(acq)
    acquisitions[-1].set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    return acquisitions


def write_mrf_raw(
    path: Path, settings: MrfScanSettings, slices: list[SimulatedMrfSlice], *, group: str = "dataset"
) -> None:
    """Write the simulated MRF scan as an ISMRMRD HDF5 raw file, with its truth in ``/truth``.

    Parameters
    ----------
    path : Output file; replaced if it exists, its folder created if missing.
    settings : The settings the slices were simulated with.
    slices : The simulated slices, in slice order.
    group : ISMRMRD dataset group name.
    """
    if len(slices) != settings.n_slices:
        raise ValueError(f"settings describe {settings.n_slices} slices, got {len(slices)}")
    with open_raw_file(path, mrf_ismrmrd_header(settings), _readouts(settings, slices), group=group) as f:
        _write_truth(f.create_group(TRUTH_GROUP), settings, slices)


def _write_truth(group: h5py.Group, settings: MrfScanSettings, slices: list[SimulatedMrfSlice]) -> None:
    """Write the ground truth: maps, labels, phase, coils, frame rotations, noise SD, schedules and settings."""
    write_truth_maps(group, [s.truth for s in slices])
    group.create_dataset("phase_rad", data=np.stack([s.phase_rad for s in slices]), compression="gzip")
    group.create_dataset("coil_sensitivities", data=np.stack([s.sens for s in slices]), compression="gzip")
    group.create_dataset("frame_angle_rad", data=slices[0].rotations.angle_rad)
    group.create_dataset("frame_interleaf", data=slices[0].rotations.interleaf)
    group.create_dataset("noise_sd", data=np.asarray([s.noise_sd for s in slices]))
    group.create_dataset("noise_covariance", data=slices[0].noise_covariance)
    group.attrs["contrast"] = "mrf"
    group.attrs["schedule_json"] = settings.schedule.to_json()
    group.attrs["full_schedule_json"] = settings.full_schedule.to_json()
    for name in (
        "matrix",
        "n_coils",
        "n_frames_full",
        "truncation",
        "n_interleaves",
        "ordering",
        "noise",
        "snr",
        "seed",
        "n_slices",
        "fov_mm",
        "schedule_seed",
        "spiral_alpha",
    ):
        group.attrs[name] = getattr(settings, name)
    group.attrs["signal_description"] = (
        "frame t of slice s is pd * exp(1j * phase_rad) * fisp_fingerprints(t1_ms, t2_ms, schedule)[..., t] in "
        "tissue (labels > 0), zero elsewhere; readouts are the unitary NUFFT of coil_sensitivities times it"
    )
