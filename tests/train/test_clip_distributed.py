"""Pieces of the CLIP loop that make N processes equal one with the global batch (the runs themselves are in
test_trainer.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medfoundry.train.clip import ClipTrainConfig, augment, augment_params, epoch_order, group_by_image, train_clip

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


def test_strong_augmentation_is_per_sample_and_keeps_light_draws() -> None:
    light = augment_params(4, torch.Generator().manual_seed(3))
    assert set(light) == {"angle", "scale", "shift", "gain", "bias"}  # version 2's recipe draws what it drew
    strong = augment_params(64, torch.Generator().manual_seed(3), "strong")
    assert {"flip_x", "flip_y", "gamma", "resolution"} <= set(strong)
    assert float(strong["scale"].min()) >= 0.9 - 1e-6 and float(strong["scale"].max()) <= 1.6 + 1e-6
    x = torch.randn(64, 3, 16, 16)
    whole = augment(x.clone(), strong)
    part = augment(x[10:20].clone(), {k: v[10:20] for k, v in strong.items()})
    assert torch.allclose(whole[10:20], part, atol=1e-5)
    with pytest.raises(Exception, match="strength"):
        augment_params(2, torch.Generator(), "wild")


def test_a_pure_left_right_flip() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    params = {"angle": torch.zeros(2), "scale": torch.ones(2), "shift": torch.zeros(2, 2),
              "gain": torch.ones(2, 1, 1, 1), "bias": torch.zeros(2, 1, 1, 1),
              "flip_x": torch.tensor([True, False]), "flip_y": torch.tensor([False, False])}
    out = augment(x.clone(), params)
    assert torch.allclose(out[0], x[0].flip(-1), atol=1e-4) and torch.allclose(out[1], x[1], atol=1e-4)


def test_training_can_start_from_given_weights(tmp_path: Path) -> None:
    first = train_clip(_config(tmp_path, "a", 4, seed=1))
    cfg = _config(tmp_path, "b", 4, seed=2, init_weights=str(first), stop_after_steps=0)
    train_clip(cfg)  # stops before the first step: nothing trained, nothing written
    from medfoundry.train import clip as clip_module

    model = clip_module.build_dual_encoder(dict(ARCH), pretrained_text=False)
    clip_module._init_from(model, str(first))
    assert all(torch.equal(v, _weights(tmp_path / "a")[k]) for k, v in model.trainable_state_dict().items())
    with pytest.raises(Exception, match="does not fit"):
        other = clip_module.build_dual_encoder({**ARCH, "embed_dim": 8}, pretrained_text=False)
        clip_module._init_from(other, str(first))


def test_attribute_heads_targets_and_loss_split_like_the_global_batch() -> None:
    from medfoundry.train.clip import attribute_loss, attribute_targets

    task = {"name": "modality", "part": 0, "classes": {"CT": ["ct", "ct scan"], "MR": ["mri"],
                                                      "endoscopy": ["colonoscopy"]},
            "source_values": {"kvasir": "endoscopy"}}
    rows = [{"label": "CT axial head", "source": "medpix"}, {"label": "MR sagittal head", "source": "medpix"},
            {"label": "polyp", "source": "kvasir"}, {"label": "pneumonia", "source": "pneumoniamnist"}]
    assert attribute_targets(rows, task).tolist() == [0, 1, 2, -1]
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    prompts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    target = attribute_targets(rows, task)
    scale = torch.tensor(10.0)
    whole = attribute_loss(img, prompts, scale, [task], [target], [3], 1)
    halves = [attribute_loss(img[a:b], prompts, scale, [task], [target[a:b]], [3], 2) for a, b in ((0, 2), (2, 4))]
    assert torch.allclose(whole, (halves[0] + halves[1]) / 2)  # what DDP's gradient averaging sees
    protos = torch.stack([torch.nn.functional.normalize(prompts[:2].mean(0), dim=-1), prompts[2], prompts[3]])
    expected = torch.nn.functional.cross_entropy(scale * img[:3] @ protos.t(), target[:3])
    assert torch.allclose(whole, expected)


def test_training_with_attribute_heads_runs(tmp_path: Path) -> None:
    task = {"name": "finding", "part": 0, "classes": {"normal": ["normal lungs"], "pneumonia": ["pneumonia"]}}
    cfg = _config(tmp_path, "attr", 4, train_attributes=[task], attribute_weight=0.5)
    folder = train_clip(cfg)
    assert (folder / "model.safetensors").is_file()
