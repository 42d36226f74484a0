"""Boxes from masks and crop windows around boxes (XYXY, pixel edges: x1 is one past the last column)."""

from __future__ import annotations

import numpy as np

from medfoundry.errors import InputContractError


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box (float, pixel edges: x1 = last column + 1) of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputContractError("empty mask has no box")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def crop_box(box: np.ndarray, margin: float, height: int, width: int) -> np.ndarray:
    """The crop window (XYXY, integers, inside the image) around ``box`` enlarged by ``margin`` × its size."""
    w, h = box[2] - box[0], box[3] - box[1]
    grow = np.array([-w, -h, w, h]) * margin
    c = np.round(box + grow).astype(int)
    c[[0, 2]] = np.clip(c[[0, 2]], 0, width)
    c[[1, 3]] = np.clip(c[[1, 3]], 0, height)
    if c[2] - c[0] < 2 or c[3] - c[1] < 2:
        raise InputContractError(f"box {box.tolist()} leaves no area inside the {width}×{height} image")
    return c


def box_in_window(box: np.ndarray, window: np.ndarray, size: int) -> np.ndarray:
    """An XYXY box in image pixels → the same box in the model input made from crop ``window`` (XYXY integers)
    squashed to ``size`` × ``size`` (float32, (4,)); inference and training both map boxes with it."""
    x0, y0, x1, y1 = window
    scale = np.array([size / (x1 - x0), size / (y1 - y0)] * 2, dtype=np.float32)
    return ((np.asarray(box, np.float32) - np.array([x0, y0, x0, y0], np.float32)) * scale).astype(np.float32)


PROPAGATION_LOGIT = 4.0


def previous_mask_prompt(mask_crop: np.ndarray, size: int) -> np.ndarray:
    """The previous slice's mask, already cut to the crop window, as the propagation head's mask input:
    (1, size, size) float32 logits, +4 inside and -4 outside, bilinearly resized (size = 4 × embedding grid)."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.ascontiguousarray(mask_crop, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[0]
    return ((m * 2 - 1) * PROPAGATION_LOGIT).numpy()
