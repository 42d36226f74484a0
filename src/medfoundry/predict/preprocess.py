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


def _resize(unit: np.ndarray, size: tuple[int, int], contract: Preprocess) -> torch.Tensor:
    """Resize (H, W, C) values in [0, 1] to ``size`` → (1, C, h, w). Display-value contracts go through Pillow
    on 8-bit values, as torchvision and open_clip do, so inputs match the reference pipelines bit for bit."""
    if contract.intensity != "minmax":
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}.get(
            contract.interpolation, Image.Resampling.BILINEAR)
        u8 = np.round(unit * 255.0).astype(np.uint8)
        channels = [np.asarray(Image.fromarray(u8[..., c]).resize(size[::-1], resample)) for c in range(u8.shape[-1])]
        return torch.from_numpy(np.stack(channels).astype(np.float32) / 255.0)[None]
    tensor = torch.from_numpy(unit).permute(2, 0, 1)[None]
    mode = contract.interpolation
    if mode == "nearest":
        return F.interpolate(tensor, size=size, mode="nearest")
    return F.interpolate(tensor, size=size, mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)


def preprocess(image: MedImage, contract: Preprocess) -> tuple[torch.Tensor, ResizeInfo]:
    """A ``(C, S, S)`` float32 tensor ready for the model, and the mapping back to original pixels."""
    unit = to_unit_range(image, contract)
    height, width = unit.shape[:2]
    info = resize_info(height, width, contract)
    resized = _resize(unit, info.content, contract) * contract.scale
    size = contract.image_size
    mean = torch.tensor(contract.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(contract.std, dtype=torch.float32)[:, None, None]
    if contract.resize == "longest_pad":
        normalised = (resized[0] - mean) / std
        out = torch.zeros((normalised.shape[0], size, size), dtype=torch.float32)
        out[:, : info.content[0], : info.content[1]] = normalised
        return out, info
    if contract.resize == "shortest_crop":
        oy, ox = round(-info.offset[0]), round(-info.offset[1])
        resized = resized[..., oy : oy + size, ox : ox + size]
    return ((resized[0] - mean) / std).contiguous(), info


def preprocess_batch(images: list[MedImage], contract: Preprocess) -> torch.Tensor:
    """Stack :func:`preprocess` over several 2D images: ``(B, C, S, S)``."""
    if not images:
        raise InputContractError("no images given")
    return torch.stack([preprocess(im, contract)[0] for im in images])
