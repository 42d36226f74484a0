"""Masks that a prompt alone gives (ellipses and ellipsoids in boxes), and the plain Dice overlap: the no-model
baselines of box-prompted segmentation, used by the evaluation harness, the benchmarks and training validation."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def ellipse_in_box(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    """The (H, W) ellipse inscribed in an XYXY box: the baseline of box-prompted 2D segmentation."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    cx, cy, rx, ry = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def ellipsoid_in_box(mask: np.ndarray) -> np.ndarray:
    """The ellipsoid inscribed in the 3D bounding box of ``mask``: the baseline of 3D box prompts."""
    zs, ys, xs = np.nonzero(mask)
    lo = np.array([zs.min(), ys.min(), xs.min()], dtype=float)
    hi = np.array([zs.max(), ys.max(), xs.max()], dtype=float) + 1
    c, r = (lo + hi) / 2, (hi - lo) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in mask.shape], indexing="ij"), -1)
    return (((grid - c) / r) ** 2).sum(-1) <= 1


def ellipsoid_from_key_box(shape: tuple[int, int, int], spacing: tuple[float, ...], key: int,
                           box: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: the no-model answer to a key-slice box that, unlike :func:`ellipsoid_in_box`, does not know
    the object's extent along z: the ellipsoid whose cross-section on slice ``key`` is the ellipse inscribed in
    ``box`` (XYXY pixel edges) and whose semi-axis along z is the mean of the in-plane semi-axes, in mm
    (``spacing`` is (dz, dy, dx) mm)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dz, dy, dx = (float(s) for s in spacing)
    ry, rx = (y1 - y0) / 2 * dy, (x1 - x0) / 2 * dx
    rz = (rx + ry) / 2
    zz, yy, xx = np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij")
    q = (((zz - key - 0.5) * dz / rz) ** 2 + ((yy - (y0 + y1) / 2) * dy / ry) ** 2
         + ((xx - (x0 + x1) / 2) * dx / rx) ** 2)
    return q <= 1
