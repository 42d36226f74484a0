"""The catalogue: required published models, taxonomy fields, filters and strict card parsing."""

from __future__ import annotations

import pytest

from medfoundry.errors import RegistryError, UnknownModelError
from medfoundry.registry import FAMILIES, ModelRecord, get_record, list_models
from medfoundry.registry.records import Preprocess

REQUIRED = ["biomedclip", "chexzero", "medclip-vit", "rad-dino", "sam-vit-b", "medsam", "litemedsam", "sam-med2d",
            "medsam2"]


@pytest.mark.parametrize("name", REQUIRED)
def test_required_published_models_are_registered(name: str) -> None:
    record = get_record(name)
    assert record.family in FAMILIES
    assert record.license and record.paper and record.training_data
    assert record.weights, f"{name} has no weights source"
    assert all(w.uri or w.manual for w in record.weights)


def test_gated_and_non_commercial_models_are_marked() -> None:
    assert get_record("conch").gated
    assert not get_record("rad-dino").commercial_use
    assert get_record("sam-vit-b").commercial_use
    commercial = {r.name for r in list_models(commercial=True)}
    assert "sam-vit-b" in commercial and "biomedclip" not in commercial


def test_filters() -> None:
    vpm = list_models(family="VPM-adaptation")
    assert vpm and all(r.family == "VPM-adaptation" for r in vpm)
    seg = list_models(task="segmentation-3d")
    assert {"medsam2", "medsam"} <= {r.name for r in seg}
    assert all("CT" in r.modalities for r in list_models(modality="ct"))
    with pytest.raises(RegistryError, match="family"):
        list_models(family="TPM-magic")


def test_aliases_and_unknown_names() -> None:
    assert get_record("SAM_VIT_B") is get_record("sam-vit-b")
    with pytest.raises(UnknownModelError, match="did you mean"):
        get_record("medsam3")


def _card(**overrides):
    card = {"name": "x", "arch": "sam", "family": "VPM-generalist", "tasks": ["segmentation-2d"],
            "modalities": ["CT"], "license": "MIT", "commercial_use": True, "paper": "p", "training_data": "d"}
    card.update(overrides)
    return card


def test_cards_are_parsed_strictly() -> None:
    assert ModelRecord.from_dict(_card()).name == "x"
    with pytest.raises(RegistryError, match="unknown keys"):
        ModelRecord.from_dict(_card(licence="MIT"))
    with pytest.raises(RegistryError, match="lacks"):
        ModelRecord.from_dict({k: v for k, v in _card().items() if k != "license"})
    with pytest.raises(RegistryError, match="family"):
        ModelRecord.from_dict(_card(family="VPM"))
    with pytest.raises(RegistryError, match="tasks"):
        ModelRecord.from_dict(_card(tasks=["segment"]))
    with pytest.raises(RegistryError):
        ModelRecord.from_dict(_card(preprocess={"channels": 1, "mean": [0.5, 0.5, 0.5], "std": [1.0]}))


def test_record_round_trips_through_json() -> None:
    record = get_record("medsam")
    again = ModelRecord.from_dict(record.to_dict())
    assert again == record
    assert isinstance(again.preprocess, Preprocess) and again.preprocess.image_size == 1024
