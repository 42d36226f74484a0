"""Segmentation training data: manifests of (image, mask) rows and box-crop training samples.

A manifest is a JSON-lines file; each row names an image and its mask (any format medfoundry reads), with
optional ``image_key``/``mask_key`` (npz arrays), ``slice`` (index into a volume), ``label`` (value of the
object in a label map; default: any non-zero), ``split`` (train/val) and ``source``.

Training samples are made by the functions inference uses: :func:`load_manifest` keeps each image as
:func:`medfoundry.predict.preprocess.pixel_values` under the model's input contract (at full resolution, as
inference sees it) and :func:`training_sample` cuts a window with
:func:`medfoundry.predict.preprocess.preprocess_window` and maps the box with
:func:`medfoundry.predict.boxes.box_in_window`, so a training sample and a ``PromptSegmenter`` input built from
the same image and box are identical (tests/train/test_seg_data.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medfoundry.datasets.segmentation import MIN_AREA
from medfoundry.errors import InputContractError
from medfoundry.files import atomic_output
from medfoundry.io import MedImage, read_image
from medfoundry.predict.boxes import box_in_window
from medfoundry.predict.preprocess import pixel_values, preprocess_window
from medfoundry.registry.records import Preprocess


def box_crop_contract(image_size: int, mean: Any, std: Any) -> Preprocess:
    """The input contract of medfoundry's box-crop segmenters (written into their records): display values
    through the image's window, 0–255, normalised by ``mean``/``std``, crops squashed bilinearly."""
    return Preprocess(image_size=image_size, resize="squash", channels=3, intensity="window", scale=255.0,
                      mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                      interpolation="bilinear")


@dataclass
class SegSample:
    """One object: the image's :func:`~medfoundry.predict.preprocess.pixel_values` (H, W, C) under the model's
    contract (uint8 display values, or float32 for ``minmax`` contracts), its mask (H, W) bool, and where it
    came from."""

    image: np.ndarray
    mask: np.ndarray
    source: str
    name: str


def load_manifest(path: str | Path, contract: Preprocess) -> dict[str, list[SegSample]]:
    """Read a manifest into memory, per split, each image as the model's ``contract`` turns it into values
    (full resolution: inference never resamples an image before cropping it, so training does not either)."""
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cache: dict[tuple, MedImage] = {}
    out: dict[str, list[SegSample]] = {}
    for row in rows:
        def get(file: str, key: str | None) -> MedImage:
            full = str(path.parent / file) if not Path(file).is_absolute() else file
            if (full, key) not in cache:
                cache[(full, key)] = read_image(full, key=key)
            return cache[(full, key)]

        image = get(row["image"], row.get("image_key"))
        if image.is_volume:
            image = image.slice(row["slice"] if row.get("slice") is not None else image.array.shape[0] // 2)
        values = pixel_values(image, contract)
        mask_img = get(row["mask"], row.get("mask_key"))
        mask_arr = mask_img.array[row["slice"]] if mask_img.is_volume else mask_img.array
        if mask_arr.ndim == 3:
            mask_arr = mask_arr[..., 0]
        label = row.get("label")
        mask = mask_arr == label if label is not None else mask_arr > 0
        if row.get("flip_y"):
            mask = mask[::-1]
        if mask.shape != values.shape[:2]:
            raise InputContractError(f"{row['mask']}: mask {mask.shape} does not match image {values.shape[:2]}")
        if mask.sum() < MIN_AREA:
            continue
        out.setdefault(row.get("split", "train"), []).append(
            SegSample(np.ascontiguousarray(values), np.ascontiguousarray(mask), row.get("source", ""),
                      f"{Path(row['image']).name}:{row.get('slice', '')}:{label if label is not None else ''}"))
    return out


def training_sample(values: np.ndarray, mask: np.ndarray | None, box: np.ndarray, window: np.ndarray,
                    contract: Preprocess) -> dict[str, torch.Tensor]:
    """One box-crop training sample, built as inference builds its input.

    Args:
        values: (H, W, C) :func:`~medfoundry.predict.preprocess.pixel_values` of the image.
        mask: (H, W) bool target, or None.
        box: the prompt box, XYXY in image pixels; window: the crop window, XYXY integers in image pixels.
    Returns:
        ``image`` (C, S, S) the normalised model input (:func:`~medfoundry.predict.preprocess.preprocess_window`),
        ``box`` (4,) XYXY in input pixels (:func:`~medfoundry.predict.boxes.box_in_window`) and, with a mask,
        ``mask`` (1, S, S) float32 (nearest-neighbour resize of the window).
    """
    size = contract.image_size
    out = {"image": preprocess_window(values, window, contract),
           "box": torch.from_numpy(box_in_window(box, window, size))}
    if mask is not None:
        out["mask"] = torch.from_numpy(crop_mask(mask, window, size)[None].astype(np.float32))
    return out


def crop_mask(mask: np.ndarray, window: np.ndarray, size: int) -> np.ndarray:
    """Cut ``window`` (XYXY integers) out of an (H, W) bool mask and resize it to ``size`` × ``size`` (nearest)."""
    x0, y0, x1, y1 = (int(v) for v in window)
    m = Image.fromarray(np.ascontiguousarray(mask[y0:y1, x0:x1]).astype(np.uint8) * 255)
    return np.asarray(m.resize((size, size), Image.Resampling.NEAREST)) > 127


def jitter_box(box: np.ndarray, rng: random.Random, amount: float, height: int, width: int) -> np.ndarray:
    """Move each edge by a normal offset of ``amount`` × the box size (MedSAM-style prompt noise)."""
    w, h = box[2] - box[0], box[3] - box[1]
    noise = np.array([rng.gauss(0, amount) * w, rng.gauss(0, amount) * h, rng.gauss(0, amount) * w,
                      rng.gauss(0, amount) * h])
    out = box + noise
    out[[0, 2]] = np.clip(out[[0, 2]], 0, width)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, height)
    if out[2] - out[0] < 2 or out[3] - out[1] < 2:
        return box.copy()
    return out.astype(np.float32)


def folder_manifest(images: str | Path, masks: str | Path, out: str | Path, val_fraction: float = 0.2,
                    seed: int = 0) -> Path:
    """A manifest pairing ``images/<stem>.*`` with ``masks/<stem>.*`` (the ``--images DIR --masks DIR`` form)."""
    images, masks = Path(images), Path(masks)
    mask_by_stem = {p.stem: p for p in masks.iterdir() if p.is_file()}
    pairs = [(p, mask_by_stem[p.stem]) for p in sorted(images.iterdir()) if p.is_file() and p.stem in mask_by_stem]
    if not pairs:
        raise InputContractError(f"no image in {images} has a mask of the same name in {masks}")
    stems = [p.stem for p, _ in pairs]
    random.Random(seed).shuffle(stems)
    val = set(stems[: int(len(stems) * val_fraction)])
    rows = [{"image": str(p.resolve()), "mask": str(m.resolve()), "split": "val" if p.stem in val else "train",
             "source": images.name} for p, m in pairs]
    out = Path(out)
    with atomic_output(out, overwrite=True) as tmp:  # torchrun ranks may write it at the same time
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
