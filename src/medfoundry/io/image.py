"""MedImage: one type for every medical image medfoundry reads.

Conventions (the same for every reader):

- ``array`` holds the pixel/voxel values with the spatial axes first, slowest-varying first: ``(Y, X)`` for a
  2D image, ``(Z, Y, X)`` for a volume or a multi-frame image; a trailing channel axis ``C`` (3 or 4) exists
  only for colour images (``(Y, X, 3)``). Y indexes rows (top to bottom), X columns (left to right).
- Values are in ``units``: ``"HU"`` for CT after the DICOM rescale, otherwise ``"raw"`` (stored values after
  any modality LUT). MONOCHROME1 images are inverted on read so that larger always means brighter.
- Geometry is in the DICOM patient frame **LPS** (x to the patient's Left, y to Posterior, z to Superior), mm.
  ``spacing`` is the voxel size along each spatial array axis in array order; ``origin`` is the LPS position of
  the centre of voxel 0; ``direction`` is a 3×N matrix whose column ``a`` is the LPS unit vector along spatial
  array axis ``a``. ``affine`` combines them into a 4×4 matrix from (array index, homogeneous) to LPS mm.
- ``orientation`` names where the X, Y and Z axes point, in that order, as ITK and DICOM write it
  (``"LPS"`` for a standard axial DICOM series, ``"RAS"`` for a canonical NIfTI).
- Identifying DICOM tags live in ``phi`` and never in ``meta``; nothing prints them unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.window import PRESETS, Window, percentile_window

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class MedImage:
    """A medical image: array + geometry + acquisition metadata, with identifying data kept apart.

    Attributes:
        array: pixel/voxel values, ``(Y, X)``, ``(Z, Y, X)`` or with a trailing colour axis (see module doc).
        spacing: voxel size in mm along each spatial array axis, in array order (``(dz, dy, dx)``).
        origin: LPS position in mm of the centre of voxel index 0.
        direction: 3×N float64, column ``a`` = LPS unit vector of spatial array axis ``a``.
        modality: DICOM modality code (``"CT"``, ``"MR"``, ``"CR"``, ``"DX"``, ``"XC"``, ``"OT"``...).
        photometric: photometric interpretation of ``array`` as stored (``"MONOCHROME2"``, ``"RGB"``...).
        units: intensity units of ``array`` (``"HU"`` or ``"raw"``).
        window: default display window, from the file when it has one.
        phi: identifying tags (name, ids, dates...) by DICOM keyword; never printed unless asked.
        meta: non-identifying acquisition metadata (transfer syntax, series description, slice info...).
        source: the path it was read from, or ``""``.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray | None = None
    modality: str = "OT"
    photometric: str = "MONOCHROME2"
    units: str = "raw"
    window: Window | None = None
    phi: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        nsp = self.spatial_ndim
        if nsp not in (2, 3):
            raise InputContractError(f"MedImage needs 2 or 3 spatial axes, got array shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != nsp or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise InputContractError(f"spacing {self.spacing} does not fit {nsp} spatial axes (all > 0 mm)")
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        if self.direction is None:
            self.direction = _default_direction(nsp)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, nsp)
        if not (np.all(np.isfinite(self.direction)) and all(np.isfinite(o) for o in self.origin)):
            raise InputContractError("direction and origin must be finite numbers")

    # -- shape -------------------------------------------------------------------------------------------
    @property
    def is_color(self) -> bool:
        """True for colour images (photometric RGB/YBR/PALETTE expanded to RGB) with a trailing channel axis."""
        return self.photometric.upper() not in ("MONOCHROME1", "MONOCHROME2") and self.array.shape[-1] in (3, 4)

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes: 2 for an image, 3 for a volume or multi-frame image."""
        return self.array.ndim - (1 if self.is_color else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[: self.spatial_ndim])

    @property
    def is_volume(self) -> bool:
        return self.spatial_ndim == 3

    # -- geometry ----------------------------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4×4 matrix mapping (array index along each spatial axis, 1) to LPS mm; 2D images get a third
        column along the image normal with the in-plane spacing, so (row, col) → (0, row, col)."""
        aff = np.eye(4)
        direction = np.asarray(self.direction)
        spacing = np.asarray(self.spacing)
        if self.spatial_ndim == 2:
            normal = np.cross(direction[:, 1], direction[:, 0])
            direction = np.column_stack([normal, direction])
            spacing = np.concatenate([[spacing.min()], spacing])
        aff[:3, :3] = direction * spacing[None, :]
        aff[:3, 3] = self.origin
        return aff

    @property
    def orientation(self) -> str:
        """Where the X, Y, Z axes point (e.g. ``"LPS"``), the ITK/DICOM way of naming it."""
        import nibabel as nib

        ras = _LPS_TO_RAS @ self.affine[:3, :3]
        codes = nib.orientations.aff2axcodes(np.vstack([np.column_stack([ras, [0, 0, 0]]), [0, 0, 0, 1]]))
        # aff2axcodes names the RAS+ end each array axis points to; reverse to the X, Y, Z order.
        return "".join(codes[::-1])

    def radiological(self) -> MedImage:
        """The same image with its in-plane axes (rows, columns; the last two spatial axes) flipped where needed
        so that it displays as radiologists read it: an axis along the body's long axis runs from superior (top
        or left) to inferior, any other axis runs towards the patient's left or posterior (anterior at the top
        and the patient's left on the image's right for an axial slice; anterior on the left of a sagittal one).
        Geometry (origin, direction) is updated, so world positions of voxels are unchanged. A volume keeps its
        slice axis. Images without geometry (identity direction) are returned unchanged."""
        array = self.array
        origin = np.asarray(self.origin, dtype=np.float64)
        direction = np.asarray(self.direction, dtype=np.float64).copy()
        nsp = self.spatial_ndim
        for axis in (nsp - 2, nsp - 1):
            d = direction[:, axis]
            main = int(np.argmax(np.abs(d)))
            wrong = d[main] > 0 if main == 2 else d[main] < 0
            if wrong:
                origin = origin + d * self.spacing[axis] * (array.shape[axis] - 1)
                direction[:, axis] = -d
                array = np.flip(array, axis=axis)
        if array is self.array:
            return self
        return replace(self, array=np.ascontiguousarray(array), origin=tuple(origin), direction=direction)

    # -- display -----------------------------------------------------------------------------------------
    def default_window(self) -> Window:
        """The file's window if it has one; the soft-tissue preset for CT in HU; the full 0–255 range for 8-bit
        images (they already hold display values); else the 0.5–99.5 percentiles."""
        if self.window is not None:
            return self.window
        if self.units == "HU":
            return PRESETS["soft_tissue"]
        if self.array.dtype == np.uint8:
            return Window(127.5, 255.0, "8-bit")
        return percentile_window(self.array)

    def to_display(self, window: Window | None = None) -> np.ndarray:
        """uint8 display values: greyscale through ``window`` (default: :meth:`default_window`); colour images
        are returned as uint8 RGB unchanged in layout (scaled to 0..255 if stored with more bits)."""
        if self.is_color:
            arr = self.array[..., :3]
            if arr.dtype == np.uint8:
                return arr.copy()
            top = float(arr.max()) or 1.0
            return np.round(arr.astype(np.float32) / top * 255).astype(np.uint8)
        return (window or self.default_window()).to_uint8(self.array)

    def slice(self, index: int) -> MedImage:
        """The 2D image at ``index`` along the first spatial axis of a volume, with its own geometry."""
        if not self.is_volume:
            raise InputContractError("slice() needs a volume; this image is 2D")
        n = self.array.shape[0]
        if not -n <= index < n:
            raise InputContractError(f"slice {index} is outside a volume of {n} slices")
        index %= n
        origin = np.asarray(self.origin) + np.asarray(self.direction)[:, 0] * self.spacing[0] * index
        return replace(
            self,
            array=self.array[index],
            spacing=self.spacing[1:],
            origin=tuple(origin),
            direction=np.asarray(self.direction)[:, 1:],
            meta={**self.meta, "slice_index": index},
        )

    def summary(self, show_phi: bool = False) -> dict[str, Any]:
        """A JSON-ready description: shape, dtype, spacing, orientation, value range, window, modality."""
        arr = self.array
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        win = self.default_window()
        out: dict[str, Any] = {
            "source": self.source,
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "spatial_shape": list(self.spatial_shape),
            "spacing_mm": [round(s, 6) for s in self.spacing],
            "origin_mm": [round(o, 4) for o in self.origin],
            "orientation": self.orientation,
            "modality": self.modality,
            "photometric": self.photometric,
            "units": self.units,
            "value_range": [float(finite.min()), float(finite.max())] if finite.size else None,
            "window": {"center": win.center, "width": win.width, "name": win.name},
            "meta": {k: v for k, v in self.meta.items() if _jsonable(v)},
        }
        if show_phi:
            out["phi"] = dict(self.phi)
        return out


def _default_direction(nsp: int) -> np.ndarray:
    """Axis-aligned LPS directions: (Z, Y, X) → (z, y, x); (Y, X) → (y, x)."""
    eye = np.eye(3)
    return eye[:, ::-1][:, 3 - nsp :] if nsp == 3 else eye[:, [1, 0]]


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, tuple))
