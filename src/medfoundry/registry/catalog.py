"""The catalogue of registered models: look up, filter and add records.

The published models' cards are read once, lazily, on first use (never at import). Embedded models
register through the same :func:`register` call, from the cards beside their weights.
"""

from __future__ import annotations

import json
from importlib import resources

from medfoundry.errors import RegistryError, UnknownModelError
from medfoundry.registry.records import FAMILIES, TASKS, ModelRecord, load_cards

_RECORDS: dict[str, ModelRecord] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for record in load_cards():
        register(record)
    for record in embedded_records():
        register(record)


def embedded_records() -> list[ModelRecord]:
    """The records of the embedded models shipped in ``medfoundry/weights/<folder>/`` (their ``card.json``;
    weights source ``package:weights/<folder>/model.safetensors``). The weights folder is package data: the
    registry reads it, it imports nothing."""
    root = resources.files("medfoundry.weights")
    records = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        card = entry / "card.json"
        if entry.is_dir() and card.is_file():
            records.append(ModelRecord.from_dict(json.loads(card.read_text(encoding="utf-8")), origin=str(card)))
    return records


def register(record: ModelRecord, *, replace: bool = False) -> None:
    """Add ``record`` to the catalogue under its name and aliases (case-insensitive)."""
    key = record.name.lower()
    if key in _RECORDS and not replace:
        raise RegistryError(f"a model named {record.name!r} is already registered")
    taken = [a for a in record.aliases if a.lower() in _ALIASES and _ALIASES[a.lower()] != key]
    if taken and not replace:
        raise RegistryError(f"aliases {taken} of {record.name!r} are already used")
    _RECORDS[key] = record
    for alias in record.aliases:
        _ALIASES[alias.lower()] = key


def get_record(name: str) -> ModelRecord:
    """The record called ``name`` (or one of its aliases). Raises UnknownModelError with close matches."""
    _ensure_loaded()
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _RECORDS:
        raise UnknownModelError(name, sorted(_RECORDS))
    return _RECORDS[key]


def list_models(
    family: str | None = None,
    task: str | None = None,
    modality: str | None = None,
    commercial: bool | None = None,
) -> list[ModelRecord]:
    """Records filtered by survey family, task, modality and whether commercial use is allowed, by name."""
    _ensure_loaded()
    if family is not None and family not in FAMILIES:
        raise RegistryError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    if task is not None and task not in TASKS:
        raise RegistryError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    out = []
    for record in _RECORDS.values():
        if family is not None and record.family != family:
            continue
        if task is not None and task not in record.tasks:
            continue
        if modality is not None and modality.lower() not in (m.lower() for m in record.modalities):
            continue
        if commercial is not None and record.commercial_use != commercial:
            continue
        out.append(record)
    return sorted(out, key=lambda r: (not r.embedded, r.family, r.name))
