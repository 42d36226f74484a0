"""Turn a :class:`MedImage` into a model's input tensor, following the model record's :class:`Preprocess`.

This is the only place where intensity handling, resizing and normalisation happen; predictors, training and
benchmarks all call it, so a model always sees what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.registry.records import Preprocess


@dataclass(frozen=True)
class ResizeInfo:
    """How original pixels map to the model input: ``input = original * scale + offset`` per axis (Y, X).

    ``original_size`` is (H, W) of the image; ``input_size`` the square side; ``content`` the (H, W) region of
    the input occupied by the image (the rest is padding for ``longest_pad``).
    """

    original_size: tuple[int, int]
    input_size: int
    scale: tuple[float, float]
    offset: tuple[float, float]
    content: tuple[int, int]


def to_unit_range(image: MedImage, contract: Preprocess) -> np.ndarray:
    """Intensities of a 2D image as float32 ``(H, W, C)`` in [0, 1] per the contract's ``intensity`` mode.

    ``window``: greyscale through the image's default window (HU windows for CT); colour /255.
    ``minmax``: per-image min-max (MedSAM); CT in HU goes through the image's window first (the soft-tissue
    preset unless the file has one), as MedSAM's own CT preprocessing (``pre_CT_MR.py``: window level 40,
    width 400, then 0–255) prepared its training slices. ``uint8``: display values /255.
    """
    if image.is_volume:
        raise InputContractError(
            f"this model takes 2D images; {image.source or 'the input'} is a volume of {image.array.shape[0]} "
            "slices: choose one (--slice K, or image.slice(k))"
        )
    if contract.intensity == "minmax" and not image.is_color:
        arr = (image.to_display() if image.units == "HU" else image.array).astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        unit = (arr - lo) / max(hi - lo, 1e-8)
    elif contract.intensity == "minmax":
        arr = image.array[..., :3].astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        unit = (arr - lo) / max(hi - lo, 1e-8)
    else:
        unit = image.to_display().astype(np.float32) / 255.0
    if unit.ndim == 2:
        unit = unit[..., None]
    channels = unit.shape[-1]
    if contract.channels == 3 and channels == 1:
        unit = np.repeat(unit, 3, axis=-1)
    elif contract.channels == 1 and channels == 3:
        unit = unit.mean(axis=-1, keepdims=True)
    return np.ascontiguousarray(unit, dtype=np.float32)


def resize_info(height: int, width: int, contract: Preprocess) -> ResizeInfo:
    """The geometric mapping from an (H, W) image to the contract's square input."""
    size = contract.image_size
    if contract.resize == "squash":
        sy, sx = size / height, size / width
        return ResizeInfo((height, width), size, (sy, sx), (0.0, 0.0), (size, size))
    if contract.resize == "longest_pad":  # as segment_anything's ResizeLongestSide
        s = size / max(height, width)
        content = (int(height * s + 0.5), int(width * s + 0.5))
        return ResizeInfo((height, width), size, (content[0] / height, content[1] / width), (0.0, 0.0), content)
    # shortest_crop, exactly as torchvision's Resize(int) + CenterCrop (as used by open_clip)
    if height <= width:
        rh, rw = size, int(size * width / height)
    else:
        rh, rw = int(size * height / width), size
    oy, ox = round((rh - size) / 2.0), round((rw - size) / 2.0)
    return ResizeInfo((height, width), size, (rh / height, rw / width), (-float(oy), -float(ox)), (rh, rw))


def pixel_values(image: MedImage, contract: Preprocess) -> np.ndarray:
    """The (H, W, C) values that resizing works on, for the whole image: uint8 display values for display-value
    contracts (``window``, ``uint8``: Pillow resizes 8-bit values, as torchvision and open_clip do), float32 in
    [0, 1] for ``minmax``. Whole images, crops and training samples are all cut from these values."""
    unit = to_unit_range(image, contract)
    if contract.intensity != "minmax":
        return np.round(unit * 255.0).astype(np.uint8)
    return unit


def resize_values(values: np.ndarray, size: tuple[int, int], contract: Preprocess) -> torch.Tensor:
    """Resize (H, W, C) :func:`pixel_values` to ``size`` (h, w) with the contract's interpolation → (1, C, h, w)
    float32 in [0, 1]. uint8 values go through Pillow (which filters over the whole source footprint when
    shrinking), float values through ``F.interpolate`` with antialiasing, so both filter the same way."""
    if values.dtype == np.uint8:
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}.get(
            contract.interpolation, Image.Resampling.BILINEAR)
        out = [np.asarray(Image.fromarray(np.ascontiguousarray(values[..., c])).resize(size[::-1], resample))
               for c in range(values.shape[-1])]
        return torch.from_numpy(np.stack(out).astype(np.float32) / 255.0)[None]
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).permute(2, 0, 1)[None]
    mode = contract.interpolation
    if mode == "nearest":
        return F.interpolate(tensor, size=size, mode="nearest")
    return F.interpolate(tensor, size=size, mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)


def normalise(resized: torch.Tensor, contract: Preprocess) -> torch.Tensor:
    """(…, C, h, w) values in [0, 1] → ``(values · scale − mean) / std`` per channel, as the contract says."""
    mean = torch.tensor(contract.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(contract.std, dtype=torch.float32)[:, None, None]
    return (resized * contract.scale - mean) / std


def preprocess_window(values: np.ndarray, window: np.ndarray, contract: Preprocess) -> torch.Tensor:
    """The model input made from a crop ``window`` (XYXY integers, pixel edges) of :func:`pixel_values`: the
    crop squashed to ``image_size`` × ``image_size`` with the contract's interpolation and normalised → (C, S, S).

    Box-crop models (``prompt_crop > 0``) see exactly this at inference (:class:`PromptSegmenter`) and in
    training (:func:`medfoundry.train.seg_data.training_sample`)."""
    x0, y0, x1, y1 = (int(v) for v in window)
    if not (0 <= x0 < x1 <= values.shape[1] and 0 <= y0 < y1 <= values.shape[0]):
        raise InputContractError(f"crop window {[x0, y0, x1, y1]} is empty or outside the "
                                 f"{values.shape[1]}×{values.shape[0]} image")
    size = contract.image_size
    return normalise(resize_values(values[y0:y1, x0:x1], (size, size), contract)[0], contract).contiguous()


def preprocess(image: MedImage, contract: Preprocess) -> tuple[torch.Tensor, ResizeInfo]:
    """A ``(C, S, S)`` float32 tensor ready for the model, and the mapping back to original pixels."""
    values = pixel_values(image, contract)
    height, width = values.shape[:2]
    info = resize_info(height, width, contract)
    normalised = normalise(resize_values(values, info.content, contract)[0], contract)
    size = contract.image_size
    if contract.resize == "longest_pad":
        out = torch.zeros((normalised.shape[0], size, size), dtype=torch.float32)
        out[:, : info.content[0], : info.content[1]] = normalised
        return out, info
    if contract.resize == "shortest_crop":
        oy, ox = round(-info.offset[0]), round(-info.offset[1])
        normalised = normalised[..., oy : oy + size, ox : ox + size]
    return normalised.contiguous(), info


def preprocess_batch(images: list[MedImage], contract: Preprocess) -> torch.Tensor:
    """Stack :func:`preprocess` over several 2D images: ``(B, C, S, S)``."""
    if not images:
        raise InputContractError("no images given")
    return torch.stack([preprocess(im, contract)[0] for im in images])
