"""Report generation by retrieval: bank building, ranking, and its typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.registry.records import ModelRecord
from medfoundry.tasks.report import build_report_bank, generate_report, most_frequent_text, split_sentences

WORDS = ["effusion", "pneumothorax", "cardiomegaly", "normal"]


class KeywordPredictor:
    """Texts embed by which keywords they hold; an image embeds as the keyword named by its mean intensity."""

    def __init__(self, name: str = "fake") -> None:
        self.record = ModelRecord.from_dict({
            "name": name, "arch": "clip", "family": "TPM-contrastive", "tasks": ["zero-shot-classification"],
            "modalities": ["X-ray"], "license": "MIT", "commercial_use": True, "paper": "t", "training_data": "t",
            "preprocess": {"image_size": 32}})

    def embed_texts(self, texts):
        out = np.array([[w in t.lower() for w in WORDS] for t in texts], dtype=np.float32) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_images(self, images):
        out = np.full((len(images), len(WORDS)), 1e-3, dtype=np.float32)
        for i, image in enumerate(images):
            out[i, int(image.array.mean()) % len(WORDS)] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _image(value: int) -> MedImage:
    return MedImage(array=np.full((8, 8), value, dtype=np.uint8), spacing=(1.0, 1.0))


REPORTS = ["Small left effusion. Heart size normal.", "Right apical pneumothorax.", "Cardiomegaly. No effusion.",
           "Right apical pneumothorax."]


def test_split_sentences() -> None:
    assert split_sentences(" Small left effusion.  Heart size normal!\nIs it? ") == [
        "Small left effusion.", "Heart size normal!", "Is it?"]
    assert split_sentences("") == []


def test_bank_keeps_unique_texts_and_sentences() -> None:
    p = KeywordPredictor()
    assert [it["item"] for it in build_report_bank(p, REPORTS).items] == REPORTS[:3]
    sentences = [it["item"] for it in build_report_bank(p, REPORTS, sentences=True).items]
    assert sentences == ["Small left effusion.", "Heart size normal.", "Right apical pneumothorax.", "Cardiomegaly.",
                         "No effusion."]
    with pytest.raises(InputContractError, match="non-empty"):
        build_report_bank(p, ["  ", ""])


def test_generate_report_retrieves_the_closest_texts_best_first() -> None:
    p = KeywordPredictor()
    bank = build_report_bank(p, REPORTS)
    report = generate_report(p, _image(1), bank)  # intensity 1 → "pneumothorax"
    assert report.text == "Right apical pneumothorax." and report.sources[0].score > 0.99
    sentence_bank = build_report_bank(p, REPORTS, sentences=True)
    report = generate_report(p, _image(2), sentence_bank, k=2)  # "cardiomegaly"
    assert report.text.startswith("Cardiomegaly.") and len(report.sources) == 2
    assert report.sources[0].score >= report.sources[1].score
    assert report.as_dict()["sources"][0]["text"] == "Cardiomegaly."


def test_generate_report_errors() -> None:
    p = KeywordPredictor()
    bank = build_report_bank(p, REPORTS)
    with pytest.raises(InputContractError, match="rebuild"):
        generate_report(KeywordPredictor("other"), _image(0), bank)
    with pytest.raises(InputContractError, match="k must"):
        generate_report(p, _image(0), bank, k=0)
    volume = MedImage(array=np.zeros((3, 8, 8), dtype=np.uint8), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputContractError, match="2D"):
        generate_report(p, volume, bank)
    from medfoundry.tasks.retrieval import RetrievalIndex

    images_only = RetrievalIndex("fake", 4)
    images_only.add(np.eye(4, dtype=np.float32)[:1], [{"kind": "image", "item": "a.png"}])
    with pytest.raises(InputContractError, match="no texts"):
        generate_report(p, _image(0), images_only)


def test_most_frequent_text_is_the_constant_baseline() -> None:
    assert most_frequent_text(REPORTS) == "Right apical pneumothorax."
    assert most_frequent_text(["b", "a"]) == "b"  # ties: the first
    with pytest.raises(InputContractError):
        most_frequent_text([])
