"""What the viewer shows of an image: axial, coronal and sagittal planes of a volume (raw values, for window
and level in the browser), their pixel spacing and the orientation letters at each edge."""

from __future__ import annotations

from typing import Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.io.window import PRESETS

VIEWS = ("axial", "coronal", "sagittal")
# LPS: +x points to the patient's left, +y posterior, +z superior.
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
VIEWER_PRESETS = ("lung", "mediastinum", "bone", "brain", "abdomen", "liver")


def _letter(vector: np.ndarray) -> str:
    """The patient direction (one of R L A P I S) that an LPS vector mostly points to."""
    axis = int(np.argmax(np.abs(vector)))
    return _LETTERS[axis][int(vector[axis] > 0)]


def _plane_axes(image: MedImage, view: str) -> tuple[int, int, int | None]:
    """(row axis, column axis, through axis) of ``view`` in the spatial array axes of ``image``."""
    if view not in VIEWS:
        raise InputContractError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    if not image.is_volume:
        if view != "axial":
            raise InputContractError("a 2D image has only its own plane (view 'axial')")
        return 0, 1, None
    return {"axial": (1, 2, 0), "coronal": (0, 2, 1), "sagittal": (0, 1, 2)}[view]


def _flip_rows(image: MedImage, view: str) -> bool:
    """Coronal and sagittal planes are shown with the head up: flip when rows run towards superior."""
    if view == "axial" or not image.is_volume:
        return False
    return _letter(np.asarray(image.direction)[:, 0]) == "S"


def view_info(image: MedImage) -> dict[str, Any]:
    """Per view: ``{slices, shape: [rows, cols], spacing_mm: [row, col], letters: {top, bottom, left, right}}``,
    the letters naming where the patient's body lies at each edge of the displayed plane."""
    direction = np.asarray(image.direction, dtype=float)
    shape = image.spatial_shape
    known = not str(image.meta.get("spacing_source", "header")).startswith("default")
    out = {}
    for view in VIEWS if image.is_volume else ("axial",):
        r, c, through = _plane_axes(image, view)
        down, right = direction[:, r], direction[:, c]
        if _flip_rows(image, view):
            down = -down
        out[view] = {"slices": int(shape[through]) if through is not None else 1, "flipped": _flip_rows(image, view),
                     "shape": [int(shape[r]), int(shape[c])],
                     "spacing_mm": [float(image.spacing[r]), float(image.spacing[c])],
                     "spacing_known": known,  # pictures without geometry: no mm, no patient directions
                     "letters": {"top": _letter(-down), "bottom": _letter(down), "left": _letter(-right),
                                 "right": _letter(right)} if known else {"top": "", "bottom": "", "left": "",
                                                                         "right": ""}}
    return out


def plane_values(image: MedImage, view: str, index: int) -> np.ndarray:
    """The raw values of plane ``index`` of ``view``: (rows, cols) float32 for greyscale, (rows, cols, 3)
    uint8 for colour images. Coronal and sagittal planes come head up."""
    _, _, through = _plane_axes(image, view)
    arr = image.array
    if through is None:
        if index != 0:
            raise InputContractError(f"a 2D image has no slice {index}")
        plane = arr
    else:
        n = arr.shape[through]
        if not 0 <= index < n:
            raise InputContractError(f"slice {index} is outside the {view} view's 0..{n - 1}")
        plane = np.take(arr, index, axis=through)
        if _flip_rows(image, view):
            plane = plane[::-1]
    if image.is_color:
        return np.ascontiguousarray(image.to_display() if through is None else plane)[..., :3].astype(np.uint8)
    return np.ascontiguousarray(plane, dtype=np.float32)


def windows(image: MedImage) -> dict[str, Any]:
    """The default window and the presets offered (CT presets only for images in HU)."""
    win = image.default_window()
    presets = {n: {"center": PRESETS[n].center, "width": PRESETS[n].width} for n in VIEWER_PRESETS} \
        if image.units == "HU" else {}
    return {"default": {"center": float(win.center), "width": float(win.width)}, "presets": presets}
