"""The checks every stream's ISMRMRD header passes on arrival, before any data is read.

A header comes from the client, so its sizes are untrusted: gadgets allocate k-space and images from the encoded
matrix and the encoding limits. What a particular chain needs beyond this (Cartesian readouts, a spiral trajectory, a
preparation-time list) its gadgets check themselves when they start.
"""

import ismrmrd.xsd

from gadgets.runtime.protocol import ProtocolError

MAX_MATRIX = 4096
"""Largest encoded or reconstructed matrix size along any axis (pixels)."""
MAX_VOXELS = 1 << 26
"""Largest encoded or reconstructed matrix in voxels (x * y * z): 64 Mi, a 4096 x 4096 x 4 or 400^3 volume."""
MAX_CHANNELS = 1024
"""Most receiver channels a header may declare."""


def check_header(header: ismrmrd.xsd.ismrmrdHeader) -> None:
    """Raise ProtocolError with one line for people when the header cannot describe a scan we can reconstruct.

    Checked: an ``<encoding>`` is present with encoded and reconstructed spaces; their matrices are 1 to
    :data:`MAX_MATRIX` per axis and at most :data:`MAX_VOXELS` in all; their fields of view are positive in x and
    y; every encoding limit has ``minimum <= center <= maximum``; ``receiverChannels`` is 1 to :data:`MAX_CHANNELS`.

    Parameters
    ----------
    header : The stream's parsed header.

    Raises
    ------
    ProtocolError
        Naming the element and its value.
    """
    if not header.encoding:
        raise ProtocolError(
            "the ISMRMRD header has no <encoding>: the chains need its encoded and reconstructed spaces "
            "(matrix size, field of view) and its encoding limits"
        )
    for number, encoding in enumerate(header.encoding):
        where = f"the header's encoding {number}"
        for name in ("encodedSpace", "reconSpace"):
            _check_space(getattr(encoding, name), f"{where} <{name}>")
        limits = encoding.encodingLimits
        if limits is None:
            continue
        for name, limit in vars(limits).items():
            if limit is None:
                continue
            low, high, center = int(limit.minimum), int(limit.maximum), int(limit.center)
            if not 0 <= low <= high or not low <= center <= high:
                raise ProtocolError(
                    f"{where} limit {name} has minimum {low}, center {center}, maximum {high}; "
                    "expected 0 <= minimum <= center <= maximum"
                )
    system = header.acquisitionSystemInformation
    channels = None if system is None else system.receiverChannels
    if channels is not None and not 1 <= int(channels) <= MAX_CHANNELS:
        raise ProtocolError(f"the header declares {channels} receiver channels; expected 1 to {MAX_CHANNELS}")


def _check_space(space: ismrmrd.xsd.encodingSpaceType | None, where: str) -> None:
    """Raise ProtocolError unless ``space`` has a sane matrix and a positive field of view."""
    if space is None or space.matrixSize is None or space.fieldOfView_mm is None:
        raise ProtocolError(f"{where} is missing or has no matrixSize and fieldOfView_mm")
    size = (int(space.matrixSize.x), int(space.matrixSize.y), int(space.matrixSize.z))
    if not all(1 <= n <= MAX_MATRIX for n in size) or size[0] * size[1] * size[2] > MAX_VOXELS:
        raise ProtocolError(
            f"{where} has matrix size {size[0]} x {size[1]} x {size[2]}; expected 1 to {MAX_MATRIX} per axis and "
            f"at most {MAX_VOXELS} voxels"
        )
    fov = space.fieldOfView_mm
    x, y, z = float(fov.x), float(fov.y), float(fov.z)
    if not (0 < x < 1e4 and 0 < y < 1e4 and 0 <= z < 1e4):
        raise ProtocolError(f"{where} has field of view {x} x {y} x {z} mm; expected x and y positive, all below 10 m")
