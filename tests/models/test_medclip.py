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
    torch.manual_seed(1)
    reference = _reference_medclip(root / "bert", root / "swin")
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


def _reference_medclip(bert: Path, swin: Path):
    """medclip.modeling_medclip.MedCLIPModel (ViT variant) with its hub ids pointed at local folders (imported
    without the package ``__init__``, then the package's modules restored)."""
    folder = Path(importlib.util.find_spec("medclip").submodule_search_locations[0])
    saved = {k: v for k, v in sys.modules.items() if k == "medclip" or k.startswith("medclip.")}
    package = types.ModuleType("medclip")
    package.__path__ = [str(folder)]
    sys.modules["medclip"] = package
    try:
        constants = importlib.import_module("medclip.constants")
        constants.BERT_TYPE, constants.VIT_TYPE = str(bert), str(swin)
        modeling = importlib.import_module("medclip.modeling_medclip")
        return modeling.MedCLIPModel(vision_cls=modeling.MedCLIPVisionModelViT).eval()
    finally:
        for key in [k for k in sys.modules if k == "medclip" or k.startswith("medclip.")]:
            del sys.modules[key]
        sys.modules.update(saved)


CASED = ["Pleural", "pleural", "effusion", "Cardiomegaly", "cardiomegaly", "no", "acute", "finding", "in", "the",
         "chest", "left", "right", "lower", "lobe", "opacity", "."]


def test_text_tower_with_a_bio_clinicalbert_shaped_tokenizer(setup, tmp_path: Path, monkeypatch) -> None:
    """The text tower on Bio_ClinicalBERT's shape (BERT, cased WordPiece vocabulary of 28,996) equals
    MedCLIPTextModel for each text, truncated at 77 tokens as MedCLIP's processor does. The real tokenizer is only
    on the hub (emilyalsentzer/Bio_ClinicalBERT): offline and uncached it is a typed error naming the repo. MedCLIP
    pads a batch to its longest text and averages over the padding; medfoundry encodes texts one at a time, so a
    short text's embedding does not depend on its batch (shown here, and said in the record)."""
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

    from medfoundry.errors import WeightsNotFoundError

    _, _, root = setup
    specials = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + CASED
    vocab += [f"tok{i}" for i in range(28996 - len(vocab))]
    bert = tmp_path / "bio_clinicalbert_shaped"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(bert / "vocab.txt"), do_lower_case=False).save_pretrained(bert)
    torch.manual_seed(2)
    BertModel(BertConfig(**{**TEXT, "vocab_size": 28996})).save_pretrained(bert)
    torch.manual_seed(3)
    reference = _reference_medclip(bert, root / "swin")
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    record = dataclasses.replace(get_record("medclip-vit"), arch_config={
        "vision_config": VISION, "text_config": {**TEXT, "vocab_size": 28996}, "tokenizer": str(bert)})
    predictor = load_contrastive(record, tmp_path / "pytorch_model.bin")
    short, long = "Pleural effusion .", " ".join(["left lower lobe opacity in the chest"] * 20)
    tokenizer = AutoTokenizer.from_pretrained(str(bert))
    tokenizer.model_max_length = 77  # MedCLIPProcessor's setting
    assert tokenizer("Pleural")["input_ids"] != tokenizer("pleural")["input_ids"]  # cased, as Bio_ClinicalBERT
    assert len(tokenizer([long], truncation=True)["input_ids"][0]) == 77

    def medclip(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            emb = reference.text_model(batch["input_ids"], batch["attention_mask"])
        return (emb / emb.norm(dim=-1, keepdim=True)).numpy()

    ours = predictor.embed_texts([short, long])
    alone = np.concatenate([medclip([short]), medclip([long])])
    assert np.abs(ours - alone).max() <= 1e-4
    assert np.abs(medclip([short, long])[0] - alone[0]).max() > 1e-3  # MedCLIP's batch padding moves it
    # the registered tokenizer needs the hub: offline, with an empty cache, a typed error naming the repo
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEDFOUNDRY_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    hub = get_record("medclip-vit").arch_config["tokenizer"]
    registered = dataclasses.replace(record, arch_config={**record.arch_config, "tokenizer": hub})
    with pytest.raises(WeightsNotFoundError, match="emilyalsentzer/Bio_ClinicalBERT"):
        load_contrastive(registered, tmp_path / "pytorch_model.bin")


def test_cli_embed_texts_and_images_equal_medclip(setup, tmp_path: Path, monkeypatch, capsys) -> None:
    """``medfoundry embed --text ...`` and ``medfoundry embed IMAGE`` with a MedCLIP record (weights as the
    published zip) write MedCLIPTextModel's normalised embeddings of each text and MedCLIP's image embedding of
    the record's pixels (equal to MedCLIP's feature extractor for square images, tested above)."""
    from transformers import AutoTokenizer

    from medfoundry.cli.main import main
    from medfoundry.io import read_image
    from medfoundry.predict.preprocess import preprocess_batch
    from medfoundry.registry import catalog

    reference, record, root = setup
    test_record = dataclasses.replace(record, name="medclip-tiny-test", aliases=())
    catalog.get_record("medclip-vit")
    monkeypatch.setitem(catalog._RECORDS, test_record.name, test_record)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256), dtype=np.uint8)).save(tmp_path / "cxr.png")
    args = ["--model", test_record.name, "--weights", str(root / "medclip-vit-pretrained.zip")]
    assert main(["embed", *[f"--text={t}" for t in TEXTS], *args, "--out", str(tmp_path / "txt.npy")]) == 0
    assert main(["embed", str(tmp_path / "cxr.png"), *args, "--out", str(tmp_path / "img.npy")]) == 0
    capsys.readouterr()
    tokenizer = AutoTokenizer.from_pretrained(str(root / "bert"))
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            batch = tokenizer([text], return_tensors="pt")
            emb = reference.text_model(batch["input_ids"], batch["attention_mask"])
            rows.append((emb / emb.norm(dim=-1, keepdim=True)).numpy())
        pixels = preprocess_batch([read_image(tmp_path / "cxr.png")], record.preprocess)
        ref_img = reference.encode_image(pixels).numpy()
    assert np.abs(np.load(tmp_path / "txt.npy") - np.concatenate(rows)).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "img.npy") - ref_img).max() <= 1e-4
