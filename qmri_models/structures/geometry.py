"""Pixel and voxel size of a 2D map, from the field of view, the matrix and the slice thickness."""

from dataclasses import dataclass

import numpy as np

ML_PER_MM3 = 1e-3
"""Millilitres per cubic millimetre."""


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry of one 2D slice, as the ISMRMRD header's reconstructed space gives it.

    Attributes
    ----------
    fov_mm : Field of view along `(y, x)` in mm.
    matrix : Pixels along `(y, x)`.
    slice_thickness_mm : Slice thickness in mm (the header's field of view along z).
    """

    fov_mm: tuple[float, float]
    matrix: tuple[int, int]
    slice_thickness_mm: float

    def __post_init__(self) -> None:
        if len(self.fov_mm) != 2 or not all(np.isfinite(f) and f > 0 for f in self.fov_mm):
            raise ValueError(f"fov_mm must be two positive finite lengths (y, x) in mm, got {self.fov_mm}")
        if len(self.matrix) != 2 or not all(int(n) == n and n >= 1 for n in self.matrix):
            raise ValueError(f"matrix must be two positive pixel counts (y, x), got {self.matrix}")
        if not (np.isfinite(self.slice_thickness_mm) and self.slice_thickness_mm > 0):
            raise ValueError(f"slice_thickness_mm must be positive and finite, got {self.slice_thickness_mm}")

    @classmethod
    def square(cls, fov_mm: float, matrix: int, slice_thickness_mm: float) -> "SliceGeometry":
        """Return the geometry of a square slice: ``fov_mm`` and ``matrix`` along both axes."""
        return cls(fov_mm=(fov_mm, fov_mm), matrix=(matrix, matrix), slice_thickness_mm=slice_thickness_mm)

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """Pixel size along `(y, x)` in mm."""
        return self.fov_mm[0] / self.matrix[0], self.fov_mm[1] / self.matrix[1]

    @property
    def pixel_area_mm2(self) -> float:
        """Area of one pixel in mm^2."""
        dy, dx = self.pixel_mm
        return dy * dx

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel (pixel area times slice thickness) in ml."""
        return self.pixel_area_mm2 * self.slice_thickness_mm * ML_PER_MM3

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless the last two axes of ``shape`` (of the array ``name``) are the matrix `(y, x)`."""
        if tuple(shape[-2:]) != tuple(self.matrix):
            raise ValueError(f"{name} has shape {shape}; its last two axes must be the matrix {self.matrix}")

    def offsets_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Return each pixel centre's offset in mm from the image centre, along y and x. Shapes `(y, 1)`, `(1, x)`.

        The image centre lies between the two middle pixels of an even matrix (``(n - 1) / 2`` in pixel indices), as
        in the simulator's phantoms.
        """
        (ny, nx), (dy, dx) = self.matrix, self.pixel_mm
        y = (np.arange(ny) - (ny - 1) / 2) * dy
        x = (np.arange(nx) - (nx - 1) / 2) * dx
        return y[:, None], x[None, :]
