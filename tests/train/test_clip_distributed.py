"""Pieces of the CLIP loop that make N processes equal one with the global batch (the runs themselves are in
test_trainer.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from medfoundry.train.clip import ClipTrainConfig, augment, augment_params, epoch_order, group_by_image

# a backbone without BatchNorm (LayerNorm only), so per-process batches hold no batch statistics
ARCH = {"image_backbone": "convnext_atto", "image_size": 32, "embed_dim": 16, "output_stride": 32}


def _pairs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        label = "pneumonia" if i % 2 else "normal"
        Image.fromarray(rng.integers(0, 90 if i % 2 else 220, (32, 32), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        texts = [f"a chest x-ray showing {label}"] + ([f"chest film, {label}, case {i}"] if i % 3 == 0 else [])
        for text in texts:
            rows.append({"image": f"{i}.png", "text": text, "label": label, "split": "val" if i >= 16 else "train",
                         "source": "toy"})
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "pairs.csv"


def _config(tmp_path: Path, out: str, batch: int, **kw) -> ClipTrainConfig:
    cfg = ClipTrainConfig(pairs=str(_pairs(tmp_path)), out=str(tmp_path / out), epochs=2, batch_size=batch,
                          warmup_steps=2, device="cpu", amp=False, arch=dict(ARCH), **kw)
    cfg.contract["image_size"] = ARCH["image_size"]
    return cfg


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "model.safetensors"))


def test_group_by_image_and_epoch_order() -> None:
    rows = [{"image": "a", "text": "x"}, {"image": "b", "text": "y"}, {"image": "a", "text": "z"},
            {"image": "a", "text": "x"}]
    images, texts = group_by_image(rows)
    assert [r["image"] for r in images] == ["a", "b"] and texts == [["x", "z"], ["y"]]
    gen = torch.Generator().manual_seed(0)
    order = epoch_order(["s", "t"] * 500, {"s": 2.0, "t": 0.5}, gen)
    counts = np.bincount(np.array(order) % 2, minlength=2)
    assert counts[0] == 1000 and 200 < counts[1] < 300  # "s" twice each, "t" about half of the time


def test_augmentation_of_a_slice_equals_the_slice_of_the_global_batch() -> None:
    x = torch.randn(6, 3, 16, 16)
    params = augment_params(6, torch.Generator().manual_seed(3))
    whole = augment(x, params)
    part = augment(x[2:4], {k: v[2:4] for k, v in params.items()})
    assert torch.allclose(whole[2:4], part, atol=1e-6)
