"""medfoundry's own embedded default models: small weights trained by this project, shipped in the package.

Each embedded model lives in a folder here holding ``card.json`` (its :class:`ModelRecord`, weights source
``package:weights/<folder>/model.safetensors``), ``model.safetensors`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
from importlib import resources

from medfoundry.registry.records import ModelRecord


def embedded_records() -> list[ModelRecord]:
    """The records of every embedded model shipped with this installation (read from their card.json)."""
    root = resources.files("medfoundry.weights")
    records = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        card = entry / "card.json"
        if entry.is_dir() and card.is_file():
            records.append(ModelRecord.from_dict(json.loads(card.read_text(encoding="utf-8")), origin=str(card)))
    return records
