"""MedCLIP-ViT matches the medclip package's own network (modeling_medclip.MedCLIPModel).

The package cannot be imported as a whole under transformers 5 (its dataset module imports the removed
``CLIPFeatureExtractor``) and builds its towers from hub ids, so the test loads ``medclip.modeling_medclip``
without the package ``__init__``, points its hub ids at small local Swin and BERT folders (width 768 as the
projection heads require, one block per stage / two layers), and saves its random weights as MedCLIP publishes
them: ``pytorch_model.bin`` inside a zip.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.predict.contrastive import load_contrastive
from medfoundry.registry import get_record

pytest.importorskip("transformers")
if importlib.util.find_spec("medclip") is None:
    pytest.skip("the medclip package is not installed", allow_module_level=True)

TEXTS = ["pleural effusion", "no finding in the chest", "mild cardiomegaly with edema"]
VISION = {"embed_dim": 96, "depths": [1, 1, 1, 1], "num_heads": [2, 2, 2, 2]}
TEXT = {"vocab_size": 30522, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import BertConfig, BertModel, SwinConfig, SwinModel

    from medfoundry.models.text import minilm_dir

    root = tmp_path_factory.mktemp("medclip")
    torch.manual_seed(0)
    SwinModel(SwinConfig(**VISION)).save_pretrained(root / "swin")
    BertModel(BertConfig(**TEXT)).save_pretrained(root / "bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, root / "bert" / name)
    # medclip.modeling_medclip without the package __init__, its hub ids pointed at the local folders
    folder = Path(importlib.util.find_spec("medclip").submodule_search_locations[0])
    saved = {k: v for k, v in sys.modules.items() if k == "medclip" or k.startswith("medclip.")}
    package = types.ModuleType("medclip")
    package.__path__ = [str(folder)]
    sys.modules["medclip"] = package
    try:
        constants = importlib.import_module("medclip.constants")
        constants.BERT_TYPE, constants.VIT_TYPE = str(root / "bert"), str(root / "swin")
        modeling = importlib.import_module("medclip.modeling_medclip")
        torch.manual_seed(1)
        reference = modeling.MedCLIPModel(vision_cls=modeling.MedCLIPVisionModelViT).eval()
    finally:
        for key in [k for k in sys.modules if k == "medclip" or k.startswith("medclip.")]:
            del sys.modules[key]
        sys.modules.update(saved)
    torch.save(reference.state_dict(), root / "pytorch_model.bin")
    with zipfile.ZipFile(root / "medclip-vit-pretrained.zip", "w") as archive:
        archive.write(root / "pytorch_model.bin", "medclip-vit-pretrained/pytorch_model.bin")
    record = dataclasses.replace(get_record("medclip-vit"), arch_config={
        "vision_config": VISION, "text_config": TEXT, "tokenizer": str(root / "bert")})
    return reference, record, root


def test_embeddings_equal_medclip(setup) -> None:
    from transformers import AutoTokenizer

    reference, record, root = setup
    predictor = load_contrastive(record, root / "medclip-vit-pretrained.zip")
    pixels = torch.randn(2, 3, 224, 224)
    grey = torch.randn(1, 1, 224, 224)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "bert"))
    with torch.no_grad():
        ref_img = reference.encode_image(pixels)
        ref_grey = reference.encode_image(grey)
        ref_txt = []
        for text in TEXTS:  # MedCLIPModel.encode_text without its .cuda(): text_model, then L2 norm
            batch = tokenizer([text], return_tensors="pt")
            emb = reference.text_model(batch["input_ids"], batch["attention_mask"])
            ref_txt.append(emb / emb.norm(dim=-1, keepdim=True))
        ours_img = predictor.backend.encode_image(pixels)
        ours_grey = predictor.backend.encode_image(grey)
    assert torch.allclose(ours_img, ref_img, atol=1e-4)
    assert torch.allclose(ours_grey, ref_grey, atol=1e-4)
    assert np.abs(predictor.embed_texts(TEXTS) - torch.cat(ref_txt).numpy()).max() <= 1e-4
    assert abs(predictor.logit_scale - float(reference.logit_scale.detach().exp())) <= 1e-4


def test_record_preprocessing_equals_medclip_on_square_images(setup, tmp_path: Path) -> None:
    """MedCLIPFeatureExtractor, written out (it no longer runs under transformers 5): pad to a square ('L', zero,
    centred), Pillow bicubic resize to 224, /255, mean 0.5863, std 0.2795. Equal to the record's chain for square
    images; non-square ones are squashed by the record instead of padded (said in the record)."""
    from medfoundry.io import read_image
    from medfoundry.predict.preprocess import preprocess_batch

    _, record, _ = setup
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(base).resize((300, 300), Image.Resampling.BILINEAR))
    Image.fromarray(arr).save(tmp_path / "cxr.png")
    img = Image.open(tmp_path / "cxr.png")
    size = max(224, *img.size)
    padded = Image.new("L", (size, size), 0)
    padded.paste(img, ((size - img.size[0]) // 2, (size - img.size[1]) // 2))
    ref = np.asarray(padded.resize((224, 224), Image.Resampling.BICUBIC), np.float32) / 255.0
    ref = (ref - 0.5862785803043838) / 0.27950088968644304
    ours = preprocess_batch([read_image(tmp_path / "cxr.png")], record.preprocess)
    assert ours.shape == (1, 3, 224, 224)
    assert float(np.abs(ours[0].numpy() - ref[None]).max()) <= 1e-4


def test_wrong_inputs_are_typed_errors(setup, tmp_path: Path) -> None:
    _, record, root = setup
    predictor = load_contrastive(record, root / "pytorch_model.bin")
    with pytest.raises(InputContractError, match="pixels"):
        predictor.backend.encode_image(torch.zeros(1, 2, 224, 224))
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("README.txt", "no weights")
    with pytest.raises(WeightsError, match=r"pytorch_model\.bin"):
        load_contrastive(record, tmp_path / "empty.zip")
    state = torch.load(root / "pytorch_model.bin", weights_only=True)
    state.pop("text_model.projection_head.weight")
    torch.save(state, tmp_path / "cut.bin")
    with pytest.raises(WeightsError, match="missing"):
        load_contrastive(record, tmp_path / "cut.bin")
