"""Segmentation training data: manifests of (image, mask) rows and box-crop sampling with simulated prompts.

A manifest is a JSON-lines file; each row names an image and its mask (any format medfoundry reads), with
optional ``image_key``/``mask_key`` (npz arrays), ``slice`` (index into a volume), ``label`` (value of the
object in a label map; default: any non-zero), ``split`` (train/val) and ``source``.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medfoundry.datasets.splits import LESION_TRAIN_PATIENTS, kvasir_val_ids
from medfoundry.errors import InputContractError
from medfoundry.files import atomic_output
from medfoundry.io import read_image

MIN_AREA = 64


@dataclass
class SegSample:
    """One object: display image (H, W, 3) uint8, its mask (H, W) bool, and where it came from."""

    image: np.ndarray
    mask: np.ndarray
    source: str
    name: str


def _display(image, index: int | None) -> np.ndarray:
    if image.is_volume:
        image = image.slice(index if index is not None else image.array.shape[0] // 2)
    pixels = image.to_display()
    return np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3]


def load_manifest(path: str | Path, max_side: int = 640) -> dict[str, list[SegSample]]:
    """Read a manifest into memory, per split. Images larger than ``max_side`` are downscaled (masks nearest)."""
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cache: dict[tuple, object] = {}
    out: dict[str, list[SegSample]] = {}
    for row in rows:
        def get(file: str, key: str | None):
            full = str(path.parent / file) if not Path(file).is_absolute() else file
            if (full, key) not in cache:
                cache[(full, key)] = read_image(full, key=key)
            return cache[(full, key)]

        image = _display(get(row["image"], row.get("image_key")), row.get("slice"))
        mask_img = get(row["mask"], row.get("mask_key"))
        mask_arr = mask_img.array[row["slice"]] if mask_img.is_volume else mask_img.array
        if mask_arr.ndim == 3:
            mask_arr = mask_arr[..., 0]
        label = row.get("label")
        mask = mask_arr == label if label is not None else mask_arr > 0
        if row.get("flip_y"):
            mask = mask[::-1]
        if mask.shape != image.shape[:2]:
            raise InputContractError(f"{row['mask']}: mask {mask.shape} does not match image {image.shape[:2]}")
        if mask.sum() < MIN_AREA:
            continue
        scale = max_side / max(image.shape[:2])
        if scale < 1:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
        out.setdefault(row.get("split", "train"), []).append(
            SegSample(np.ascontiguousarray(image), np.ascontiguousarray(mask), row.get("source", ""),
                      f"{Path(row['image']).name}:{row.get('slice', '')}:{label if label is not None else ''}"))
    return out


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


def crop_resize(image: np.ndarray, mask: np.ndarray | None, window: np.ndarray, size: int
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Cut ``window`` out of the image (and mask) and squash it to ``size``×``size``."""
    x0, y0, x1, y1 = window
    img = Image.fromarray(image[y0:y1, x0:x1]).resize((size, size), Image.Resampling.BILINEAR)
    out_mask = None
    if mask is not None:
        m = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
        out_mask = np.asarray(m) > 127
    return np.asarray(img), out_mask


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


def shared_manifest(shared_root: str | Path, out: str | Path, seed: int = 0) -> Path:
    """The embedded segmenter's training manifest from the shared data folder.

    Kvasir-SEG polyps (80 % train / 20 % val by image id), TotalSegmentator CT organs cut from the label map of
    ``example_ct_sm`` (train), and DeepLesion CT lesion slices: patients 000001 and 000002 train, 000009 and
    000010 are kept for the 3D evaluation and never trained on.
    """
    root = Path(shared_root).resolve()
    out = Path(out).resolve()
    rows = []
    with open(root / "kvasir_seg" / "metadata.csv", newline="", encoding="utf-8") as fh:
        ids = sorted(r["id"] for r in csv.DictReader(fh))
    val = kvasir_val_ids(ids, seed)
    for i in sorted(ids):
        rows.append({"image": str(root / "kvasir_seg" / "images" / f"{i}.jpg"),
                     "mask": str(root / "kvasir_seg" / "masks" / f"{i}.png"),
                     "split": "val" if i in val else "train", "source": "kvasir"})
    ct = root / "totalsegmentator_examples" / "nifti"
    seg = read_image(ct / "example_seg.nii.gz").array
    for z in range(seg.shape[0]):
        labels, counts = np.unique(seg[z], return_counts=True)
        for lab, count in zip(labels, counts, strict=True):
            if lab and count >= MIN_AREA:
                rows.append({"image": str(ct / "example_ct_sm.nii.gz"), "mask": str(ct / "example_seg.nii.gz"),
                             "slice": z, "label": int(lab), "split": "train", "source": "ct_organs"})
    for path in sorted((root / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")):
        patient = path.stem.split("_")[2]
        if patient not in LESION_TRAIN_PATIENTS:
            continue
        with np.load(path) as z:
            gts = z["gts"]
        for k in range(gts.shape[0]):
            if gts[k].sum() >= MIN_AREA:
                rows.append({"image": str(path), "image_key": "imgs", "mask": str(path), "mask_key": "gts",
                             "slice": k, "split": "train", "source": "deeplesion"})
    out.parent.mkdir(parents=True, exist_ok=True)
    import os

    for r in rows:  # relative to the manifest so data and manifest can travel together
        r["image"] = os.path.relpath(r["image"], out.parent)
        r["mask"] = os.path.relpath(r["mask"], out.parent)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
