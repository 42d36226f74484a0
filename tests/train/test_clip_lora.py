"""LoRA fine-tuning of contrastive towers: adapters train, only the chosen tower changes, and the merged model
is written in its own format and loads back with identical embeddings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.predict.contrastive import open_contrastive, save_open_clip_folder
from medfoundry.registry import ModelRecord
from medfoundry.registry.loading import write_checkpoint_record
from medfoundry.train.clip_lora import ClipLoraConfig, finetune_clip_lora

TEXTS = ["chest x-ray with pneumonia", "normal chest x-ray"]


def _pairs(tmp_path: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = rng.normal(100 + 60 * (i % 2), 20, (64, 64)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "text": TEXTS[i % 2], "label": ["normal", "pneumonia"][i % 2],
                     "split": "val" if i >= n - 2 else "train"})
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path / "pairs.csv"


TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
    "quick_gelu": True,
}


def _tiny_open_clip_folder(tmp_path: Path) -> str:
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CFG)
    folder = tmp_path / "tiny-open-clip"
    save_open_clip_folder(model, {"model_cfg": TINY_CFG, "preprocess_cfg": {}}, folder)
    write_checkpoint_record(ModelRecord.from_dict({
        "name": "tiny-open-clip", "arch": "open_clip", "family": "TPM-contrastive",
        "tasks": ["zero-shot-classification", "embedding"], "modalities": ["CR"], "license": "MIT",
        "commercial_use": True, "paper": "test", "training_data": "none",
        "preprocess": {"image_size": 64, "resize": "shortest_crop", "channels": 3, "intensity": "uint8",
                       "scale": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}}), folder)
    return f"local-dir:{folder}"


@pytest.mark.parametrize("tower", ["text", "image"])
def test_one_tower_lora_on_the_embedded_model_leaves_the_other_alone(tmp_path: Path, tower: str) -> None:
    pairs = _pairs(tmp_path)
    folder = finetune_clip_lora(ClipLoraConfig(model="medfoundry-clip-tiny", pairs=str(pairs), out=str(tmp_path / "r"),
                                               tower=tower, epochs=2, batch_size=4, lr=5e-3), progress=False)
    base, tuned = open_contrastive("medfoundry-clip-tiny"), open_contrastive(f"local-dir:{folder}")
    images = [tmp_path / f"p{i}.png" for i in range(4)]
    same_img = np.allclose(base.embed_images(images), tuned.embed_images(images), atol=1e-5)
    same_txt = np.allclose(base.embed_texts(TEXTS), tuned.embed_texts(TEXTS), atol=1e-5)
    assert (same_img, same_txt) == ((True, False) if tower == "text" else (False, True))
    assert tuned.record.name == "medfoundry-clip-tiny-lora"
    history = __import__("json").loads((tmp_path / "r" / "history.json").read_text())
    assert history[0]["trainable_parameters"] > 0 and len(history) == 3


def test_both_towers_of_an_open_clip_folder_round_trip(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path)
    model = _tiny_open_clip_folder(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "clip-lora", "--model", model, "--pairs", str(pairs), "--out", str(out), "--tower", "both",
                 "--epochs", "1", "--batch-size", "4", "--lr", "1e-2"]) == 0
    base, tuned = open_contrastive(model), open_contrastive(f"local-dir:{out / 'model'}")
    images = [tmp_path / f"p{i}.png" for i in range(3)]
    assert (out / "model" / "open_clip_config.json").is_file()
    assert not np.allclose(base.embed_images(images), tuned.embed_images(images), atol=1e-4)
    assert not np.allclose(base.embed_texts(TEXTS), tuned.embed_texts(TEXTS), atol=1e-4)


def test_bad_lora_settings(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path)
    for bad in ({"tower": "ears"}, {"rank": 0}):
        with pytest.raises(Exception, match=r"tower|rank"):
            finetune_clip_lora(ClipLoraConfig(model="medfoundry-clip-tiny", pairs=str(pairs),
                                              out=str(tmp_path / "x"), **bad), progress=False)
