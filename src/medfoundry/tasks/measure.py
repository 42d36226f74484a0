"""Measurements of a mask: area/volume from the spacing, RECIST-style diameters, intensity statistics."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage


@dataclass
class Measurement:
    """Sizes in millimetres; ``area_mm2`` for 2D masks, ``volume_ml`` for 3D; diameters on the axial slice
    where the long axis is longest (RECIST); intensity statistics in the image's units (HU for CT; None for
    colour images). ``spacing_known`` is False when the file carried no pixel spacing (1 mm was assumed, so
    the sizes are in pixels)."""

    pixels: int
    area_mm2: float | None
    volume_ml: float | None
    long_axis_mm: float
    short_axis_mm: float
    key_slice: int | None
    mean: float | None
    std: float | None
    units: str
    spacing_known: bool = True
    #: end points of the long and short axis on the measured slice (:func:`axis_endpoints`), for drawing; not
    #: part of :meth:`to_dict`
    axes: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def size_unit(self) -> str:
        """``mm`` when the file gave the pixel spacing, else ``px`` (the ``*_mm``/``*_mm2`` values are pixels)."""
        return "mm" if self.spacing_known else "px"

    def to_dict(self) -> dict:
        """The fields (without the drawing's ``axes``), plus ``size_unit``."""
        out = asdict(self)
        out.pop("axes")
        return {**out, "size_unit": self.size_unit}

    def describe(self) -> str:
        """One line for people, in the right units: ``"812 px, 203.0 mm², long axis 21.3 mm, short axis 12.0
        mm"``, or in pixels when the file has no spacing (never mm² or mL for sizes that are not)."""
        if self.spacing_known:
            size = f"{self.volume_ml:.2f} mL" if self.volume_ml is not None else f"{self.area_mm2:.1f} mm²"
        else:
            size = "the file has no pixel spacing, so sizes are in pixels"
        return (f"{self.pixels} px, {size}, long axis {self.long_axis_mm:.1f} {self.size_unit}, "
                f"short axis {self.short_axis_mm:.1f} {self.size_unit}")


def boundary(mask2d: np.ndarray) -> np.ndarray:
    """The (H, W) bool pixels of a 2D mask with a 4-neighbour outside it (the image's edge counts as outside).
    The convex hull of the mask's pixel corners is that of its boundary pixels' corners: a corner of an inner
    pixel is surrounded by mask on at least three sides, so it is never a hull vertex."""
    m = np.asarray(mask2d, dtype=bool)
    inner = np.zeros_like(m)
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def hull_axes(mask2d: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, int, int, np.ndarray] | None:
    """The convex hull of a 2D mask's pixel corners and its long axis, or None for an empty or zero-length mask.

    Returns ``(corners, i, j, normal)``: ``corners`` (N, 2) the hull's corners as (x, y) pixel corners (integers
    as floats; x = column, y = row), ``corners[i]``-``corners[j]`` the farthest pair in mm (spacing (dy, dx)),
    ``normal`` the unit vector perpendicular to it in mm space.
    """
    ys, xs = np.nonzero(boundary(mask2d))  # the hull's corners all belong to boundary pixels
    if ys.size == 0:
        return None
    width = int(np.asarray(mask2d).shape[1]) + 1
    keys = np.unique(np.concatenate([(ys + oy) * width + (xs + ox) for ox in (0, 1) for oy in (0, 1)]))
    corners = np.stack([keys % width, keys // width], 1).astype(float)
    dy, dx = spacing
    if len(corners) > 3:
        from scipy.spatial import ConvexHull

        with contextlib.suppress(Exception):  # degenerate (collinear) masks: all points stay
            corners = corners[ConvexHull(corners * [dx, dy]).vertices]
    mm = corners * [dx, dy]
    dist = np.linalg.norm(mm[:, None] - mm[None], axis=-1)
    i, j = np.unravel_index(dist.argmax(), dist.shape)
    if dist[i, j] == 0:
        return None
    direction = (mm[j] - mm[i]) / dist[i, j]
    return corners, int(i), int(j), np.array([-direction[1], direction[0]])


def diameters(mask2d: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    """(long axis, short axis) in mm of a 2D mask with pixel spacing (dy, dx).

    Long axis: the largest distance between two pixel corners of the mask. Short axis: the largest extent of
    the mask perpendicular to it (the RECIST short-axis measurement).
    """
    return _lengths(hull_axes(mask2d, spacing), spacing)


def axis_endpoints(mask2d: np.ndarray, spacing: tuple[float, float]) -> dict[str, Any] | None:
    """End points of the long axis (the farthest pair of mask pixel corners, in mm) and of the short axis (the
    widest extent perpendicular to it, placed through the middle of the long axis) of a 2D mask with pixel
    spacing (dy, dx), as ``{"long": [[x, y], [x, y]], "short": [...]}`` in pixel coordinates (x = column,
    y = row, pixel corners at integers); None for an empty mask. The lengths are those of :func:`diameters`."""
    return _endpoints(hull_axes(mask2d, spacing), spacing)


def _lengths(axes: Any, spacing: tuple[float, float]) -> tuple[float, float]:
    """(long, short) axis in mm from :func:`hull_axes`' result."""
    if axes is None:
        return 0.0, 0.0
    corners, i, j, normal = axes
    mm = corners * [spacing[1], spacing[0]]
    proj = mm @ normal
    return float(np.linalg.norm(mm[j] - mm[i])), float(proj.max() - proj.min())


def _endpoints(axes: Any, spacing: tuple[float, float]) -> dict[str, Any] | None:
    """:func:`axis_endpoints` from :func:`hull_axes`' result."""
    if axes is None:
        return None
    pts, i, j, normal = axes
    to_px = np.array([spacing[1], spacing[0]])
    mm = pts * to_px
    proj = mm @ normal
    lo, hi = int(proj.argmin()), int(proj.argmax())
    mid = (mm[i] + mm[j]) / 2
    a, b = mid + normal * (proj[lo] - mid @ normal), mid + normal * (proj[hi] - mid @ normal)
    return {"long": [pts[i].tolist(), pts[j].tolist()], "short": [(a / to_px).tolist(), (b / to_px).tolist()]}


def measure(mask: np.ndarray, image: MedImage) -> Measurement:
    """Measure ``mask`` (same spatial shape as ``image``; 2D or 3D, non-zero = inside) on ``image``'s grid."""
    mask = np.asarray(mask).astype(bool)
    known = not str(image.meta.get("spacing_source", "header")).startswith("default")
    if mask.shape != image.spatial_shape:
        raise InputContractError(f"mask shape {mask.shape} differs from the image's {image.spatial_shape}")
    count = int(mask.sum())
    values = image.array[mask] if not image.is_color else None
    mean = float(values.mean()) if values is not None and count else None
    std = float(values.std()) if values is not None and count else None
    if image.is_volume:
        dz, dy, dx = image.spacing
        best, key, best_axes = (0.0, 0.0), None, None
        for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
            axes = hull_axes(mask[z], (dy, dx))
            d = _lengths(axes, (dy, dx))
            if d[0] > best[0]:
                best, key, best_axes = d, int(z), axes
        drawn = _endpoints(best_axes, (dy, dx))
        return Measurement(count, None, count * dz * dy * dx / 1000.0, best[0], best[1], key, mean, std, image.units,
                           known, drawn)
    dy, dx = image.spacing
    axes = hull_axes(mask, (dy, dx))
    long_axis, short_axis = _lengths(axes, (dy, dx))
    return Measurement(count, count * dy * dx, None, long_axis, short_axis, None, mean, std, image.units, known,
                       _endpoints(axes, (dy, dx)))
