"""Noise adjustment: whiten every readout's coils with the covariance of the scan's noise readouts.

As Gadgetron's NoiseAdjustGadget (``gadgets/mri_core/NoiseAdjustGadget.cpp``): the noise readouts
(``ACQ_IS_NOISE_MEASUREMENT``) at the start of the stream are summed into a coil covariance, the whitening matrix
is computed at the first readout that is not noise, the noise readouts go no further, and every following readout
(Cartesian or spiral) has its samples whitened in place, ``data = W @ data`` over the coils. Noise readouts after
the first imaging readout are dropped unused. Without a noise scan the readouts pass unchanged (logged once).

Units (``units``): ``data`` (the default) keeps the data's: whitened noise has the coils' mean noise power, so
reconstructions stay in the scanner's units and white noise of equal power is left as it was; ``snr`` is
Gadgetron's scale, ``sqrt(2 * acquisition_dwell / noise_dwell * relativeReceiverNoiseBandwidth)`` with the dwell
times of the readouts (``sample_time_us``) and the header's bandwidth (0.793 without one), so the imaging noise has
variance ``relativeReceiverNoiseBandwidth`` in the real and the imaginary part: images in SNR units.
The science is ``qmri_models.recon.prewhitening``.

What the gadget holds is bounded (DESIGN.md, Trust): the covariance (coils x coils), summed from at most
``max_noise_readouts`` noise readouts (the first ones).
"""

import logging
from dataclasses import dataclass
from typing import Any, Literal

import ismrmrd
import numpy as np

from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register
from qmri_models.recon.prewhitening import (
    GADGETRON_RECEIVER_NOISE_BANDWIDTH,
    data_units_scale,
    prewhiten,
    snr_units_scale,
    whitening_matrix,
)

log = logging.getLogger(__name__)

NoiseUnits = Literal["data", "snr"]


@dataclass(frozen=True)
class NoiseAdjustConfig(GadgetConfig):
    """Properties of NoiseAdjustGadget."""

    units: NoiseUnits = prop(
        "data",
        "scale of the whitened data: data (noise keeps the coils' mean power, the scanner's units) or snr "
        "(Gadgetron's: unit noise variance per real and imaginary part, from the dwell-time ratio and the header's "
        "relativeReceiverNoiseBandwidth)",
    )
    max_noise_readouts: int = prop(
        256,
        "noise readouts summed into the covariance (the first ones; later ones are dropped unused)",
        minimum=1,
        maximum=4096,
        site=True,
    )


@register("NoiseAdjustGadget", NoiseAdjustConfig, consumes=(ismrmrd.Acquisition,), produces=(ismrmrd.Acquisition,))
def noise_adjust(connection: GadgetConnection) -> None:
    """Prewhiten every readout's coils with the noise scan's covariance; drop the noise readouts (as Gadgetron)."""
    adjuster = NoiseAdjuster(connection.header, NoiseAdjustConfig.from_connection(connection))
    connection.filter(ismrmrd.Acquisition)
    for acq in connection:
        if adjuster.add(acq):
            connection.send(acq)
    adjuster.finish()


class NoiseAdjuster:
    """Sums the noise readouts' covariance, then whitens the readouts that follow; one stream's state.

    Parameters
    ----------
    header : The stream's parsed ISMRMRD header (``acquisitionSystemInformation`` read if present).
    config : The gadget's properties.
    """

    def __init__(self, header: Any, config: NoiseAdjustConfig) -> None:
        self._config = config
        system = getattr(header, "acquisitionSystemInformation", None)
        bandwidth = getattr(system, "relativeReceiverNoiseBandwidth", None)
        self._receiver_noise_bandwidth = GADGETRON_RECEIVER_NOISE_BANDWIDTH if bandwidth is None else float(bandwidth)
        self._sum: np.ndarray | None = None
        self._n_samples = 0
        self._n_noise = 0
        self._noise_dwell_us = 0.0
        self._dropped = 0
        self._whitening: np.ndarray | None = None
        self._data_scale = 1.0
        self._started = False

    def add(self, acq: ismrmrd.Acquisition) -> bool:
        """Take one readout: sum a noise readout (returns False: it goes no further), whiten any other in place.

        Parameters
        ----------
        acq : The readout; its ``data`` is overwritten with the whitened samples.

        Returns
        -------
        Whether to send the readout on.

        Raises
        ------
        ValueError
            If a readout's coils differ from the noise scan's, or the noise covariance cannot be whitened.
        """
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._add_noise(acq)
            return False
        if not self._started:
            self._start()
        if self._whitening is None:
            return True
        if acq.active_channels != len(self._whitening):
            raise ValueError(
                f"readout {acq.scan_counter} has {acq.active_channels} coils, the noise scan had "
                f"{len(self._whitening)}: its samples cannot be whitened"
            )
        scale = self._scale(float(acq.sample_time_us))
        acq.data[:] = prewhiten(acq.data, self._whitening * np.complex64(scale))
        return True

    def finish(self) -> None:
        """Log, at the end of the stream, noise readouts that were dropped and a stream that held only noise."""
        if self._dropped:
            log.info(
                "NoiseAdjustGadget: %d noise readouts were dropped unused (beyond the first %d, max_noise_readouts, "
                "or after the first imaging readout)",
                self._dropped,
                self._config.max_noise_readouts,
            )
        if not self._started and self._n_noise:
            log.info("NoiseAdjustGadget: the stream held %d noise readouts and no other readouts", self._n_noise)

    def _add_noise(self, acq: ismrmrd.Acquisition) -> None:
        """Sum a noise readout's ``data data^H`` into the covariance, within ``max_noise_readouts``."""
        if self._started or self._n_noise >= self._config.max_noise_readouts:
            self._dropped += 1
            return
        data = np.asarray(acq.data, dtype=np.complex128)
        if self._sum is None:
            self._sum = np.zeros((data.shape[0], data.shape[0]), dtype=np.complex128)
            self._noise_dwell_us = float(acq.sample_time_us)
        elif data.shape[0] != len(self._sum):
            raise ValueError(
                f"noise readout {acq.scan_counter} has {data.shape[0]} coils, the first noise readout had "
                f"{len(self._sum)}"
            )
        self._sum += data @ data.conj().T
        self._n_samples += data.shape[1]
        self._n_noise += 1

    def _start(self) -> None:
        """At the first imaging readout: compute the whitening matrix from the noise summed so far, or log none."""
        self._started = True
        if self._sum is None or self._n_samples < 2:
            log.info("NoiseAdjustGadget: no noise scan before the first readout: no prewhitening is done")
            return
        covariance = self._sum / (self._n_samples - 1)
        self._whitening = whitening_matrix(covariance)
        self._data_scale = data_units_scale(covariance)
        self._sum = None
        log.info(
            "NoiseAdjustGadget: prewhitening %d coils with the covariance of %d noise readouts (%d samples, "
            "dwell %g us), units=%s",
            len(covariance),
            self._n_noise,
            self._n_samples,
            self._noise_dwell_us,
            self._config.units,
        )

    def _scale(self, acquisition_dwell_us: float) -> float:
        """Return the whitener's scale for a readout read with ``acquisition_dwell_us``."""
        if self._config.units == "data":
            return self._data_scale
        return snr_units_scale(acquisition_dwell_us, self._noise_dwell_us, self._receiver_noise_bandwidth)
