"""RAD-DINO runs through transformers' Dinov2Model and matches it, preprocessing included.

The test builds a small randomly initialised DINOv2 (2 layers, width 48) and saves it as RAD-DINO is published
(a transformers folder with RAD-DINO's own ``preprocessor_config.json``), so no download is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medfoundry.errors import InputContractError, WeightsNotFoundError
from medfoundry.predict.contrastive import load_contrastive
from medfoundry.registry import get_record

transformers = pytest.importorskip("transformers")

#: microsoft/rad-dino's preprocessor_config.json
RAD_DINO_PROCESSOR = {
    "crop_size": {"height": 518, "width": 518}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5307, 0.5307, 0.5307],
    "image_processor_type": "BitImageProcessor", "image_std": [0.2583, 0.2583, 0.2583], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 518},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                          patch_size=14, image_size=518, layerscale_value=1.0)
    model = Dinov2Model(config).eval()
    out = tmp_path_factory.mktemp("rad-dino")
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(RAD_DINO_PROCESSOR))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("cxr")
    paths = []
    for i, shape in enumerate([(600, 540), (530, 700, 3)]):
        base = rng.integers(0, 256, (shape[0] // 10 + 1, shape[1] // 10 + 1), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(base).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
        if len(shape) == 3:
            arr = np.stack([arr, arr // 2, 255 - arr], axis=-1)
        Image.fromarray(arr).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def test_embeddings_equal_dinov2(folder: Path, images: list[Path]) -> None:
    from transformers import AutoImageProcessor, Dinov2Model

    record = get_record("rad-dino")
    predictor = load_contrastive(record, folder)
    reference = Dinov2Model.from_pretrained(str(folder)).eval()
    pixels = torch.randn(2, 3, 518, 518)
    with torch.no_grad():
        ref = reference(pixel_values=pixels).pooler_output
        ours = predictor.backend.encode_image(pixels)
    assert ours.shape == (2, 48)
    assert torch.allclose(ours, ref, atol=1e-4)
    # the record's preprocessing against RAD-DINO's processor (the PIL backend, as published: BitImageProcessor)
    processor = AutoImageProcessor.from_pretrained(str(folder), use_fast=False)
    ref_pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    from medfoundry.io import read_image
    from medfoundry.predict.preprocess import preprocess_batch

    our_pixels = preprocess_batch([read_image(p) for p in images], record.preprocess)
    assert our_pixels.shape == ref_pixels.shape == (2, 3, 518, 518)
    assert float((our_pixels - ref_pixels).abs().max()) <= 1e-4
    with torch.no_grad():
        ref_emb = F.normalize(reference(pixel_values=ref_pixels).pooler_output, dim=-1)
    assert np.abs(predictor.embed_images(images) - ref_emb.numpy()).max() <= 1e-4


def test_dense_features_and_errors(folder: Path, tmp_path: Path) -> None:
    from medfoundry.predict.contrastive import open_contrastive

    predictor = open_contrastive("rad-dino", weights=folder)  # through the registry, weights given
    with torch.no_grad():
        dense = predictor.backend.encode_image_dense(torch.randn(1, 3, 518, 518))
    assert dense.shape == (1, 48, 37, 37)
    with pytest.raises(InputContractError, match="image-only"):
        predictor.embed_texts(["a chest x-ray"])
    with pytest.raises(InputContractError, match="pixels"):
        predictor.backend.encode_image(torch.zeros(1, 1, 518, 518))
    with pytest.raises(WeightsNotFoundError, match=r"config\.json"):
        load_contrastive(get_record("rad-dino"), tmp_path)
    np.save(tmp_path / "vol.npy", np.zeros((4, 32, 32), dtype=np.float32))
    with pytest.raises(InputContractError, match="volume"):
        predictor.embed_images([tmp_path / "vol.npy"])


def test_cli_embed_equals_dinov2(folder: Path, images: list[Path], tmp_path: Path, capsys) -> None:
    """``medfoundry embed IMAGES --model rad-dino --weights FOLDER --out f.npy`` writes the reference's
    normalised pooler_output of the processor's pixels, one row per image."""
    from transformers import AutoImageProcessor, Dinov2Model

    from medfoundry.cli.main import main

    out = tmp_path / "f.npy"
    assert main(["embed", *map(str, images), "--model", "rad-dino", "--weights", str(folder), "--out", str(out)]) == 0
    capsys.readouterr()
    processor = AutoImageProcessor.from_pretrained(str(folder), use_fast=False)
    pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = F.normalize(Dinov2Model.from_pretrained(str(folder)).eval()(pixel_values=pixels).pooler_output, dim=-1)
    written = np.load(out)
    assert written.shape == (2, 48) and np.abs(written - ref.numpy()).max() <= 1e-4
