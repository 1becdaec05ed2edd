"""The qMRI Diffusor's scalings: IR images to a common level, maps into [-1, 1] and back.

Maps use the paper's ``f(x) = 2 tanh(x) - 1`` on each map in its unit (``MAP_UNITS``): T1 in seconds as the paper,
PD relative to the image level, B over 2 (the paper's B in its own unit, about 2, would sit where tanh is flat:
1.7 and 2.0 would differ by 0.03 after scaling; over 2 they differ by 0.13). Zero, outside the object, maps to -1.
"""

import numpy as np
import torch

MAP_NAMES: tuple[str, ...] = ("T1", "PD", "B")
"""The generated maps, in channel order."""
MAP_UNITS: dict[str, float] = {"T1": 1000.0, "PD": 1.0, "B": 2.0}
"""The value of each map that scales to tanh(1): T1 in ms, PD in units of the image level, B."""
IMAGE_LEVEL_PERCENTILE = 99.0
"""The image level is this percentile, over the pixels, of each pixel's largest magnitude over the TIs."""
_EDGE = 1.0 - 1e-6
"""How close to 1 a scaled map may come before the inverse (atanh) is taken."""


def image_level(magnitude: np.ndarray) -> float:
    """Return the level the IR images are divided by before the network sees them (and PD is measured in).

    Parameters
    ----------
    magnitude : IR magnitude images. Shape `(tis, y, x)`.

    Returns
    -------
    The ``IMAGE_LEVEL_PERCENTILE`` percentile of the largest magnitude over the TIs; 1 for an empty image.
    """
    level = float(np.percentile(np.abs(magnitude).max(axis=0), IMAGE_LEVEL_PERCENTILE))
    return level if level > 0 else 1.0


def maps_to_unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Return maps scaled into [-1, 1) by ``2 tanh(map / unit) - 1``.

    Parameters
    ----------
    maps : T1 (ms), PD (image-level units) and B, each at least 0. Shape `(..., 3, y, x)`.
    """
    units = torch.tensor([MAP_UNITS[n] for n in MAP_NAMES], dtype=maps.dtype, device=maps.device).view(3, 1, 1)
    return 2.0 * torch.tanh(maps / units) - 1.0


def maps_from_unit_range(scaled: torch.Tensor) -> torch.Tensor:
    """Return the maps of scaled ones (the inverse of ``maps_to_unit_range``; values below -1 give 0).

    Parameters
    ----------
    scaled : Shape `(..., 3, y, x)`.

    Returns
    -------
    T1 (ms), PD (image-level units) and B. Shape of ``scaled``.
    """
    units = torch.tensor([MAP_UNITS[n] for n in MAP_NAMES], dtype=scaled.dtype, device=scaled.device).view(3, 1, 1)
    return torch.atanh(((scaled + 1.0) / 2.0).clamp(0.0, _EDGE)) * units
