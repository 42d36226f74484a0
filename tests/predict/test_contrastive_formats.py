"""Published CLIP formats load through the reference libraries and give their embeddings exactly.

Each test builds a small checkpoint of one format locally (no download), loads it through medfoundry and
compares image and text embeddings with the reference library on the same inputs (cosine ≥ 0.9999, fp32).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medfoundry.io import read_image
from medfoundry.predict.contrastive import load_contrastive, save_open_clip_folder
from medfoundry.registry import ModelRecord

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a chest x-ray with pneumonia", "a normal chest x-ray", "a colon polyp"]
TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    "quick_gelu": True,
}
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _record(arch: str, size: int = 64) -> ModelRecord:
    return ModelRecord.from_dict({
        "name": f"tiny-{arch}", "arch": arch, "family": "TPM-contrastive",
        "tasks": ["zero-shot-classification", "embedding"], "modalities": ["CR"], "license": "MIT",
        "commercial_use": True, "paper": "test", "training_data": "none",
        "preprocess": {"image_size": size, "resize": "shortest_crop", "channels": 3, "intensity": "uint8",
                       "scale": 1.0, "mean": MEAN, "std": STD, "interpolation": "bicubic"},
    })


def _tiny_open_clip(seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CFG).eval()
    return model


def _cos(a, b) -> np.ndarray:
    return F.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b)).numpy()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, shape in enumerate([(80, 96, 3), (64, 64, 3), (100, 70)]):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def test_open_clip_folder_matches_open_clip(tmp_path: Path, images: list[Path]) -> None:
    model = _tiny_open_clip()
    folder = save_open_clip_folder(model, {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": MEAN, "std": STD}},
                                   tmp_path / "oc")
    predictor = load_contrastive(_record("open_clip"), folder)
    ref, _, ref_preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        ref_text = F.normalize(ref.encode_text(tokenizer(TEXTS)), dim=-1)
        pixels = torch.stack([ref_preprocess(Image.open(p).convert("RGB")) for p in images])
        ref_img = F.normalize(ref.eval().encode_image(pixels), dim=-1)
    assert _cos(predictor.embed_texts(TEXTS), ref_text).min() >= 0.9999
    # same tensors in → same embeddings out
    with torch.no_grad():
        ours = predictor.backend.encode_image(pixels)
    assert _cos(ours, ref_img).min() >= 0.9999
    # medfoundry's own preprocessing of the files vs open_clip's PIL pipeline
    assert _cos(predictor.embed_images(images), ref_img).min() >= 0.9999


def test_openai_state_dict_matches_open_clip(tmp_path: Path) -> None:
    model = _tiny_open_clip(1)
    torch.save(model.state_dict(), tmp_path / "chexzero_like.pt")
    predictor = load_contrastive(_record("openai_clip"), tmp_path / "chexzero_like.pt")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_text = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
        ref_img = F.normalize(model.encode_image(pixels), dim=-1)
        ours_img = predictor.backend.encode_image(pixels)
    assert _cos(predictor.embed_texts(TEXTS), ref_text).min() >= 0.9999
    assert _cos(ours_img, ref_img).min() >= 0.9999


def test_hf_clip_matches_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from medfoundry.models.text import minilm_dir

    config = CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 128},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        projection_dim=32,
    )
    torch.manual_seed(2)
    model = CLIPModel(config).eval()
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, folder / name)
    predictor = load_contrastive(_record("hf_clip"), folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        ref_text = model.get_text_features(**batch)
        ref_img = model.get_image_features(pixel_values=pixels)
        ref_text = ref_text if isinstance(ref_text, torch.Tensor) else ref_text.pooler_output
        ref_img = ref_img if isinstance(ref_img, torch.Tensor) else ref_img.pooler_output
        ours_img = predictor.backend.encode_image(pixels)
    assert _cos(predictor.embed_texts(TEXTS), ref_text).min() >= 0.9999
    assert _cos(ours_img, ref_img).min() >= 0.9999


def test_volume_without_slice_is_refused(tmp_path: Path) -> None:
    model = _tiny_open_clip()
    folder = save_open_clip_folder(model, {"model_cfg": TINY_CFG}, tmp_path / "oc")
    predictor = load_contrastive(_record("open_clip"), folder)
    np.save(tmp_path / "vol.npy", np.zeros((5, 32, 32), dtype=np.float32))
    with pytest.raises(Exception, match="volume"):
        predictor.embed_images([read_image(tmp_path / "vol.npy")])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_stays_close_to_fp32(tmp_path: Path, images: list[Path], precision: str) -> None:
    model = _tiny_open_clip()
    folder = save_open_clip_folder(model, {"model_cfg": TINY_CFG}, tmp_path / "oc")
    ref = load_contrastive(_record("open_clip"), folder)
    low = load_contrastive(_record("open_clip"), folder).set_precision(precision)
    assert _cos(low.embed_images(images), ref.embed_images(images)).min() >= 0.98
    assert _cos(low.embed_texts(TEXTS), ref.embed_texts(TEXTS)).min() >= 0.98
    emb = low.embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(Exception, match="precision"):
        ref.set_precision("fp8")
