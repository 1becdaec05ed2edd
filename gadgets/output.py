"""Output: our rich items back to ``ismrmrd.Image`` series that carry their meaning in meta."""

from dataclasses import dataclass

import ismrmrd
import numpy as np

from gadgets.items import PhaseImages
from gadgets.runtime.config import GadgetConfig, prop
from gadgets.runtime.registry import GadgetConnection, register


@dataclass(frozen=True)
class ImageSeriesConfig(GadgetConfig):
    """Properties of ImageSeriesGadget."""

    series_index: int = prop(1, "image_series_index of the per-phase magnitude images", minimum=0)
    data_role: str = prop("Image", "GADGETRON_DataRole written in each image's meta")
    sequence_description: str = prop("_phases", "suffix for GADGETRON_SeqDescription (the series description)")


@register("ImageSeriesGadget", ImageSeriesConfig)
def image_series(connection: GadgetConnection) -> None:
    """Send each slice's phase images as magnitude ismrmrd.Images of one series, phase and prep time in meta."""
    config = ImageSeriesConfig.from_connection(connection)
    for item in connection:
        if isinstance(item, PhaseImages):
            for image in phase_images_to_mrd(item, config):
                connection.send(image)
        else:
            connection.send(item)


def phase_images_to_mrd(item: PhaseImages, config: ImageSeriesConfig) -> list[ismrmrd.Image]:
    """Return one magnitude ``ismrmrd.Image`` per phase with geometry from the readouts and meta.

    Meta: ``GADGETRON_DataRole``, ``GADGETRON_SeqDescription``, ``GADGETRON_ImageComment``, ``PhaseIndex``,
    ``PrepTime_ms`` and a window covering the slice (``GADGETRON_WindowCenter``/``GADGETRON_WindowWidth``).

    Parameters
    ----------
    item : The slice's phase images.
    config : Series properties.

    Returns
    -------
    Images in phase order.
    """
    magnitude = np.abs(item.images).astype(np.float32)
    n_phases = magnitude.shape[0]
    low, high = np.percentile(magnitude, [1, 99])
    images = []
    for phase in range(n_phases):
        ref = item.references[phase]
        image = ismrmrd.Image.from_array(magnitude[phase], acquisition=ref, transpose=False)
        image.image_type = ismrmrd.IMTYPE_MAGNITUDE
        image.image_series_index = config.series_index
        image.image_index = item.slice * n_phases + phase + 1
        image.slice = item.slice
        image.set = phase
        image.field_of_view[:] = item.field_of_view_mm
        prep_ms = float(item.prep_times_ms[phase])
        meta = ismrmrd.Meta(
            {
                "GADGETRON_DataRole": config.data_role,
                "GADGETRON_SeqDescription": config.sequence_description,
                "GADGETRON_ImageComment": f"phase {phase} prep {prep_ms:g} ms",
                "PhaseIndex": phase,
                "PrepTime_ms": f"{prep_ms:g}",
                "GADGETRON_WindowCenter": f"{(high + low) / 2:.6g}",
                "GADGETRON_WindowWidth": f"{max(high - low, 1e-12):.6g}",
            }
        )
        image.attribute_string = meta.serialize()
        images.append(image)
    return images
