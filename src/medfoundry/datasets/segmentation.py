"""Segmentation manifests (JSON lines of image, mask, slice, split, source) from the shared data folder."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from medfoundry.datasets.splits import LESION_TRAIN_PATIENTS, kvasir_val_ids
from medfoundry.io import read_image

#: objects (or slices of them) smaller than this many pixels are left out of segmentation training
MIN_AREA = 64


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
    for r in rows:  # relative to the manifest so data and manifest can travel together
        r["image"] = os.path.relpath(r["image"], out.parent)
        r["mask"] = os.path.relpath(r["mask"], out.parent)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
