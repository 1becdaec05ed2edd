"""Regions of interest a site supplies: a label image with names, circles of a phantom definition, the sphere phantom.

Every region is a ``Roi``: a name, a mask (one for the slice, or one per sample when each sample has its own
segmentation) and the nominal values a phantom definition states. Circle centres are in pixel indices `(row,
column)` or in mm from the image centre `(y, x)`, with y along the rows, as ``SliceGeometry.offsets_mm``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qmri_models.simulation.tissues import ParameterMaps
from qmri_models.structures.geometry import SliceGeometry

SPHERE_MARGIN_MM = 4.0
"""Default margin left out inside every phantom sphere's edge, in mm: about 3 pixels at 160^2 over 220 mm and one at
64^2, the reach of the edge blur and ringing of an undersampled reconstruction. The simulator's spheres (radius about
19 mm at any matrix, 220 mm field of view) keep about 60 % of their area."""
SPHERE_PREFIX = "sphere_"
"""Label names of the simulator's phantom spheres start with this (``qmri_models.simulation.anatomy``)."""

CentreUnit = Literal["mm", "px"]


@dataclass(frozen=True, eq=False)
class Roi:
    """One structure to measure."""

    name: str
    mask: np.ndarray = field(repr=False)
    """Pixels of the structure. Shape `(y, x)` or `(samples, y, x)` bool."""
    nominal_ms: Mapping[str, float] = field(default_factory=dict)
    """Nominal value of each map (``T1``, ``T2``) in ms, from a phantom definition; empty when unknown."""

    def __post_init__(self) -> None:
        if self.mask.dtype != np.bool_ or self.mask.ndim not in (2, 3):
            raise ValueError(f"ROI {self.name!r}: mask must be bool (y, x) or (samples, y, x), got {self.mask.shape}")
        object.__setattr__(self, "nominal_ms", dict(self.nominal_ms))


@dataclass(frozen=True)
class Circle:
    """A circular region of a phantom definition."""

    name: str
    centre: tuple[float, float]
    """Centre `(y, x)`: in mm from the image centre, or in pixel indices `(row, column)`; see ``centre_unit``."""
    radius_mm: float
    """Radius in mm."""
    centre_unit: CentreUnit = "mm"
    nominal_ms: Mapping[str, float] = field(default_factory=dict)
    """Nominal value of each map (``T1``, ``T2``) in ms."""

    def __post_init__(self) -> None:
        if self.centre_unit not in ("mm", "px"):
            raise ValueError(f"circle {self.name!r}: centre_unit must be mm or px, got {self.centre_unit!r}")
        if len(self.centre) != 2 or not all(np.isfinite(c) for c in self.centre):
            raise ValueError(f"circle {self.name!r}: centre must be two finite numbers (y, x), got {self.centre}")
        if not (np.isfinite(self.radius_mm) and self.radius_mm > 0):
            raise ValueError(f"circle {self.name!r}: radius_mm must be positive and finite, got {self.radius_mm}")
        object.__setattr__(self, "nominal_ms", dict(self.nominal_ms))


def rois_from_labels(labels: np.ndarray, names: Mapping[int, str]) -> tuple[Roi, ...]:
    """Return one ROI per named label of a label image (a site's mask file, or a classification's labels).

    Parameters
    ----------
    labels : Label of each pixel. Shape `(y, x)`, or `(samples, y, x)` for one segmentation per sample; integer.
    names : Name of each label value; every non-zero value in ``labels`` needs one, 0 is background unless named.

    Returns
    -------
    The ROIs in order of increasing label value; a named label absent from ``labels`` gives an empty mask.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer (y, x) or (samples, y, x), got {labels.dtype} {labels.shape}")
    if len(set(names.values())) != len(names):
        raise ValueError(f"label names must be distinct, got {dict(names)}")
    unnamed = sorted(set(np.unique(labels).tolist()) - set(names) - {0})
    if unnamed:
        raise ValueError(f"labels {unnamed} have no name in {dict(names)}")
    return tuple(Roi(name=names[value], mask=labels == value) for value in sorted(names))


def circle_rois(circles: Sequence[Circle], geometry: SliceGeometry, *, margin_mm: float = 0.0) -> tuple[Roi, ...]:
    """Return the ROI of every circle: the pixels whose centre lies within its radius less ``margin_mm``.

    Parameters
    ----------
    circles : The circles, e.g. the spheres of a phantom definition.
    geometry : The slice geometry (pixel size and image centre).
    margin_mm : Width in mm left out inside each circle's edge (partial volume), at least 0.

    Returns
    -------
    One ROI per circle, in order, each with a `(y, x)` mask and the circle's nominal values.
    """
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"margin_mm must be at least 0, got {margin_mm}")
    y_mm, x_mm = geometry.offsets_mm()
    rois = []
    for circle in circles:
        radius = circle.radius_mm - margin_mm
        if radius <= 0:
            raise ValueError(f"circle {circle.name!r}: margin {margin_mm} mm is not below radius {circle.radius_mm}")
        cy, cx = _centre_mm(circle, geometry)
        mask = (y_mm - cy) ** 2 + (x_mm - cx) ** 2 <= radius**2
        if not mask.any():
            raise ValueError(f"circle {circle.name!r} at {circle.centre} {circle.centre_unit} covers no pixel centre")
        rois.append(Roi(name=circle.name, mask=mask, nominal_ms=circle.nominal_ms))
    return tuple(rois)


def _centre_mm(circle: Circle, geometry: SliceGeometry) -> tuple[float, float]:
    """Return a circle's centre in mm from the image centre, `(y, x)`."""
    if circle.centre_unit == "mm":
        return circle.centre
    (ny, nx), (dy, dx) = geometry.matrix, geometry.pixel_mm
    return (circle.centre[0] - (ny - 1) / 2) * dy, (circle.centre[1] - (nx - 1) / 2) * dx


def sphere_phantom_circles(truth: ParameterMaps, geometry: SliceGeometry) -> tuple[Circle, ...]:
    """Return the spheres of a simulated sphere phantom as circles, from the simulator's own truth.

    Each label named ``sphere_NN`` (``qmri_models.simulation.anatomy.sphere_phantom``) gives a circle centred on the
    label's centroid, with the radius of a disc of the label's area and the label's T1 and T2 as nominal values (a
    sphere holds one value throughout). The truth of a rotated layout gives the rotated circles.

    Parameters
    ----------
    truth : The phantom's ground truth (``sphere_phantom``, or ``SimulatedSlice.truth`` of a ``spheres`` scan).
    geometry : The slice geometry; its matrix must be the truth's shape.

    Returns
    -------
    One circle per sphere, in label order, centred in pixel indices.
    """
    geometry.check_shape("truth.labels", truth.labels.shape)
    circles = []
    for value, name in enumerate(truth.label_names):
        if not name.startswith(SPHERE_PREFIX):
            continue
        inside = truth.labels == value
        rows, columns = np.nonzero(inside)
        if rows.size == 0:
            raise ValueError(f"sphere {name!r} (label {value}) has no pixel in the truth")
        circles.append(
            Circle(
                name=name,
                centre=(float(rows.mean()), float(columns.mean())),
                radius_mm=float(np.sqrt(rows.size * geometry.pixel_area_mm2 / np.pi)),
                centre_unit="px",
                nominal_ms={"T1": float(np.median(truth.t1_ms[inside])), "T2": float(np.median(truth.t2_ms[inside]))},
            )
        )
    if not circles:
        raise ValueError(f"the truth has no {SPHERE_PREFIX}* label: {truth.label_names}")
    return tuple(circles)


def sphere_phantom_rois(
    truth: ParameterMaps, geometry: SliceGeometry, *, margin_mm: float = SPHERE_MARGIN_MM
) -> tuple[Roi, ...]:
    """Return the ROIs of a simulated sphere phantom's spheres, each shrunk by ``margin_mm`` inside its edge.

    Parameters
    ----------
    truth : The phantom's ground truth, as for ``sphere_phantom_circles``.
    geometry : The slice geometry; its matrix must be the truth's shape.
    margin_mm : Width in mm left out inside each sphere's edge, at least 0.

    Returns
    -------
    One ROI per sphere, in label order, with the sphere's nominal T1 and T2.
    """
    return circle_rois(sphere_phantom_circles(truth, geometry), geometry, margin_mm=margin_mm)
