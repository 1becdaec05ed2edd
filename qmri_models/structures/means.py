"""The structures of a stack of maps with their true means: what a structure-level interval is calibrated on.

A structure is a tissue class of the map itself (``classify.classify_tissues`` inside the fit's kept pixels, as
StructureReportGadget classifies on the stream), or the pixels no class explains (``outlier``). Per slice and
structure: the mean of the map over its pixels, the mean of the voxel SD map there (the uncertainty a structure-level
interval ``mean +- lambda * mean voxel SD`` scales) and the mean of the true map over the same pixels, the number the
report's mean estimates. Structures smaller than ``MIN_STRUCTURE_PIXELS`` are left out: a mean over a handful of
pixels is no structure a radiologist reads.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qmri_models.structures.classify import HEAD_CLASSES, OUTSIDE, classify_tissues

MIN_STRUCTURE_PIXELS = 20
"""Smallest structure measured, in pixels (the fit mask's smallest island, ``fitting.maps.MIN_ISLAND_PIXELS``)."""


@dataclass(frozen=True)
class StructureMeans:
    """Per slice and structure, padded to the most structures of a slice; every array has shape `(slices, k)`."""

    value: np.ndarray
    """Mean of the map over the structure, in its unit."""
    sd: np.ndarray
    """Mean of the voxel SD map over the structure, same unit."""
    truth: np.ndarray
    """Mean of the true map over the same pixels."""
    pixels: np.ndarray
    """Pixels of the structure (0 for padding)."""
    names: tuple[tuple[str, ...], ...]
    """Each slice's structure names, in column order."""

    @property
    def valid(self) -> np.ndarray:
        """The entries that are structures, not padding. Shape `(slices, k)` bool."""
        return self.pixels > 0


def structure_means(
    value: np.ndarray,
    sd: np.ndarray,
    truth: np.ndarray,
    kept: np.ndarray,
    *,
    class_names: Sequence[str] = HEAD_CLASSES,
    min_pixels: int = MIN_STRUCTURE_PIXELS,
) -> StructureMeans:
    """Return the classified structures of every slice with their mean value, mean voxel SD and true mean.

    Parameters
    ----------
    value : The maps, e.g. T1 in ms. Shape `(slices, y, x)`.
    sd : Their voxel SD maps, same unit. Same shape.
    truth : The true maps, same unit. Same shape.
    kept : Pixels the fit kept (the classification's mask). Same shape, bool.
    class_names : Tissue classes in order of increasing T1 (``classify.HEAD_CLASSES`` as on the stream).
    min_pixels : Smallest structure measured.

    Returns
    -------
    The structures, slices in input order.
    """
    rows: list[list[tuple[str, float, float, float, int]]] = []
    for v, s, t, k in zip(value, sd, truth, kept, strict=True):
        classes = classify_tissues(v, mask=k, class_names=class_names)
        row = []
        for label, name in classes.names_by_label.items():
            pixels = classes.labels == label
            n = int(pixels.sum())
            if label != OUTSIDE and n >= min_pixels:
                row.append((name, float(v[pixels].mean()), float(s[pixels].mean()), float(t[pixels].mean()), n))
        rows.append(row)
    width = max((len(row) for row in rows), default=0)
    arrays = np.zeros((4, len(rows), width))
    for i, row in enumerate(rows):
        for j, (_, mean, mean_sd, true_mean, n) in enumerate(row):
            arrays[:, i, j] = (mean, mean_sd, true_mean, n)
    return StructureMeans(
        value=arrays[0],
        sd=arrays[1],
        truth=arrays[2],
        pixels=arrays[3].astype(np.int64),
        names=tuple(tuple(entry[0] for entry in row) for row in rows),
    )
