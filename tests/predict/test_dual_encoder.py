"""medfoundry's dual encoder: MiniLM text tower equals sentence-transformers; checkpoints, zero-shot, CLI."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.errors import InputContractError
from medfoundry.models.clip import DualEncoderConfig, build_dual_encoder
from medfoundry.predict.contrastive import open_contrastive
from medfoundry.registry import ModelRecord, save_checkpoint
from medfoundry.tasks.zero_shot import zero_shot_classify

ARCH = asdict(DualEncoderConfig(image_backbone="resnet10t", image_size=64, embed_dim=32))


def test_minilm_tower_equals_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    from medfoundry.models.text import MiniLMTextEncoder, minilm_dir, minilm_tokenizer

    texts = ["a chest x-ray with pneumonia", "normal chest radiograph", "colon polyp"]
    ours = MiniLMTextEncoder().load_pretrained().eval()
    ids, mask = minilm_tokenizer()(texts)
    with torch.no_grad():
        a = ours(ids, mask)
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(a, ref.float())
    assert cos.min() >= 0.9999


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_dual_encoder(ARCH, pretrained_text=False)
    record = ModelRecord.from_dict({
        "name": "tiny-dual", "arch": "medfoundry_clip", "arch_config": ARCH, "family": "TPM-contrastive",
        "tasks": ["zero-shot-classification", "embedding"], "modalities": ["CR"], "license": "MIT",
        "commercial_use": True, "paper": "t", "training_data": "t", "templates": ["a photo of {}", "{}"],
        "label_sets": {"modality": {"CT": ["a CT scan", "computed tomography"], "MR": ["an MRI scan"]}},
        "preprocess": {"image_size": 64, "resize": "squash", "channels": 3, "intensity": "window", "scale": 1.0,
                       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}})
    folder = save_checkpoint(model.trainable_state_dict(), record, tmp_path_factory.mktemp("dual") / "ckpt")
    assert not any(k.startswith("text.") for k in __import__("safetensors.torch").torch.load_file(
        str(folder / "model.safetensors")))
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + i * 10, 50), dtype=np.uint8)).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def test_embeddings_are_unit_norm_and_ordered(checkpoint: Path, images: list[Path]) -> None:
    predictor = open_contrastive(f"local-dir:{checkpoint}")
    emb = predictor.embed_images(images)
    assert emb.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predictor.embed_images(images[::-1]), emb[::-1], atol=1e-5)
    heat = predictor.dense_similarity(__import__("medfoundry").read_image(images[0]), "pneumonia")
    assert heat.shape == (2, 2) and np.all(np.abs(heat) <= 1 + 1e-5)


def test_zero_shot_modes_and_label_errors(checkpoint: Path, images: list[Path]) -> None:
    predictor = open_contrastive(f"local-dir:{checkpoint}")
    single = zero_shot_classify(predictor, images, ["normal", "pneumonia", "effusion"])
    np.testing.assert_allclose(single.probs.sum(1), 1.0, rtol=1e-5)
    multi = zero_shot_classify(predictor, images, ["pneumonia", "effusion"], multilabel=True)
    assert multi.probs.shape == (3, 2) and np.all((multi.probs > 0) & (multi.probs < 1))
    strict = zero_shot_classify(predictor, images, ["a", "b"], uncertain_below=0.99)
    assert strict.uncertain.all()
    for labels, message in [([], "at least one"), (["a", "A "], "duplicate"), (["a", ""], "non-empty")]:
        with pytest.raises(InputContractError, match=message):
            zero_shot_classify(predictor, images, labels)


def test_label_set_prompts_are_ensembled_per_class(checkpoint: Path, images: list[Path]) -> None:
    from medfoundry.tasks.zero_shot import class_prototypes, label_set

    predictor = open_contrastive(f"local-dir:{checkpoint}")
    prompts = label_set(predictor, "modality")
    assert prompts == {"CT": ["a CT scan", "computed tomography"], "MR": ["an MRI scan"]}
    protos = class_prototypes(predictor, ["CT", "MR"], ["{}"], prompts)
    ct = predictor.embed_texts(prompts["CT"]).mean(0)
    np.testing.assert_allclose(protos[0], ct / np.linalg.norm(ct), atol=1e-5)
    np.testing.assert_allclose(protos[1], predictor.embed_texts(["an MRI scan"])[0], atol=1e-5)
    mixed = class_prototypes(predictor, ["CT", "other"], ["a photo of {}"], prompts)  # "other" uses the template
    np.testing.assert_allclose(mixed[1], predictor.embed_texts(["a photo of other"])[0], atol=1e-5)
    result = zero_shot_classify(predictor, images, ["CT", "MR"], prompts=prompts)
    manual = (predictor.embed_images(images) @ protos.T) * predictor.logit_scale
    np.testing.assert_allclose(result.probs.argmax(1), manual.argmax(1))
    with pytest.raises(InputContractError, match="no label set 'plane'.*modality"):
        label_set(predictor, "plane")


def test_classify_and_embed_cli(checkpoint: Path, images: list[Path], tmp_path: Path, capsys) -> None:
    code = main(["classify", *map(str, images), "--model", f"local-dir:{checkpoint}", "--labels", "normal,pneumonia",
                 "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and len(data["results"]) == 3 and set(data["results"][0]["scores"]) == {"normal", "pneumonia"}
    out = str(tmp_path / "e.npy")
    assert main(["embed", *map(str, images), "--model", f"local-dir:{checkpoint}", "--out", out]) == 0
    assert np.load(tmp_path / "e.npy").shape == (3, 32)
    assert main(["embed", "--text", "pneumonia", "--model", f"local-dir:{checkpoint}", "--out",
                 str(tmp_path / "e.npy")]) == 2  # exists: refused
    capsys.readouterr()
    assert main(["classify", str(images[0]), "--model", "no-such-model", "--labels", "a,b"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["classify", str(images[0]), "--model", f"local-dir:{checkpoint}", "--label-set", "modality",
                 "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["results"][0]["scores"]) == {"CT", "MR"}
    assert main(["classify", str(images[0]), "--model", f"local-dir:{checkpoint}", "--label-set", "modality",
                 "--labels", "CT,PET"]) == 2
    assert "not in the label set" in capsys.readouterr().err


def test_ground_cli(checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    out, npy = tmp_path / "g.png", tmp_path / "g.npy"
    assert main(["ground", str(images[0]), "--text", "pneumonia", "--model", f"local-dir:{checkpoint}",
                 "--out", str(out), "--npy", str(npy)]) == 0
    assert Image.open(out).size == Image.open(images[0]).size and np.load(npy).shape == (2, 2)
