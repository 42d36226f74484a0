"""Training loops run end to end on tiny data, resume, and produce loadable self-describing folders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.train.clip import ClipTrainConfig, clip_loss, soft_targets, train_clip


def test_soft_targets_reduce_to_clip() -> None:
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    plain = clip_loss(img, txt, torch.tensor(10.0), soft_targets(["a", "b", "a", "c"], list("wxyz"), 0.0))
    logits = 10 * img @ txt.t()
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4))
                 + torch.nn.functional.cross_entropy(logits.t(), torch.arange(4)))
    assert torch.allclose(plain, ref, atol=1e-6)
    soft = soft_targets(["a", "b", "a", "c"], list("wxyz"), 0.5)
    assert torch.allclose(soft.sum(1), torch.ones(4)) and soft[0, 2] > 0 and soft[0, 1] == 0


def _pairs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = "pneumonia" if i % 2 else "normal"
        arr = rng.integers(0, 80 if i % 2 else 200, (32, 32), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "text": f"a chest x-ray showing {label}", "label": label,
                     "split": "val" if i >= 8 else "train", "source": "toy"})
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "pairs.csv"


def test_clip_training_runs_resumes_and_loads(tmp_path: Path) -> None:
    from medfoundry.predict.contrastive import open_contrastive

    cfg = ClipTrainConfig(pairs=str(_pairs(tmp_path)), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                          warmup_steps=1, device="cpu")
    cfg.arch.update(image_backbone="resnet10t", image_size=32, embed_dim=16)
    cfg.contract["image_size"] = 32
    folder = train_clip(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and "val_auroc_toy" in history[0]
    cfg.epochs = 2
    train_clip(cfg)  # resumes at epoch 1
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2
    predictor = open_contrastive(f"local-dir:{folder}")
    assert predictor.embed_texts(["normal"]).shape == (1, 16)


@pytest.mark.parametrize("mode", ["full", "decoder", "lora", "pool-mix"])
def test_sam_training_runs_and_loads(tmp_path: Path, disc_manifest: Path, mode: str) -> None:
    pytest.importorskip("segment_anything")
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.train.sam import SamTrainConfig, train_sam

    manifest = disc_manifest
    cfg = SamTrainConfig(manifest=str(manifest), out=str(tmp_path / "run"), epochs=1, batch_size=2,
                         steps_per_epoch=2, device="cpu", warmup_steps=1, mode="full" if mode == "pool-mix" else mode,
                         pool_mix=(2, 1) if mode == "pool-mix" else ())
    cfg.arch.update(image_size=64, backbone="resnet10t")
    folder = train_sam(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())[0]
    assert "val_dice" in history and ("val_dice_pool1" in history) == (mode == "pool-mix")
    assert json.loads((folder / "medfoundry.json").read_text())["arch_config"].get("embed_pool", 1) == 1
    seg = open_segmenter(f"local-dir:{folder}")
    seg.set_image(__import__("medfoundry").read_image(tmp_path / "img" / "0.png"))
    assert seg.predict(boxes=np.array([[10.0, 10.0, 50.0, 50.0]])).masks.shape == (1, 1, 64, 64)


def test_sam_learning_rate_follows_steps_or_time_budget() -> None:
    from medfoundry.train.sam import SamTrainConfig, learning_rate

    cfg = SamTrainConfig(manifest="m", out="o", lr=1e-3, warmup_steps=10)
    assert learning_rate(cfg, 4, 100, 0.0) == pytest.approx(1e-3 * 0.5 * 0.5 * (1 + math.cos(math.pi * 0.04)))
    assert learning_rate(cfg, 50, 100, 0.0) == pytest.approx(5e-4)
    # a time budget only counts when asked for: half the budget gone means half the cosine done
    cfg.max_minutes = 2.0
    assert learning_rate(cfg, 20, 1000, 60.0) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.02)))
    cfg.time_schedule = True
    assert learning_rate(cfg, 20, 1000, 60.0) == pytest.approx(5e-4)
    assert learning_rate(cfg, 20, 1000, 500.0) == pytest.approx(0.0)
