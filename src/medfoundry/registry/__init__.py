"""The model registry: records of (architecture, weights) with taxonomy, licence and input contract,
weight sources (file, ``local-dir:``, ``package:``, ``hf-hub:``, URL) and safe loading."""

from medfoundry.registry.catalog import get_record, list_models, register
from medfoundry.registry.loading import (
    convert_to_safetensors,
    fetch_weights,
    load_state_dict,
    read_checkpoint_record,
    resolve_model,
    save_checkpoint,
)
from medfoundry.registry.records import FAMILIES, TASKS, ModelRecord, Preprocess, WeightsSource
from medfoundry.registry.sources import resolve

__all__ = [
    "FAMILIES",
    "TASKS",
    "ModelRecord",
    "Preprocess",
    "WeightsSource",
    "convert_to_safetensors",
    "fetch_weights",
    "get_record",
    "list_models",
    "load_state_dict",
    "read_checkpoint_record",
    "register",
    "resolve",
    "resolve_model",
    "save_checkpoint",
]
