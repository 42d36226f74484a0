"""Case tables (CSV) for the built-in benchmarks, made from the project's shared data folder.

Splits match the embedded models' training: the ``val`` rows were never trained on.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path


def prepare_shared(shared_root: str | Path, out: str | Path) -> list[Path]:
    """Write ``pneumonia.csv`` (+ PNGs) and ``kvasir.csv`` into ``out``; returns their paths."""
    from medfoundry.train.seg_data import shared_manifest
    from medfoundry.train.shared_pairs import _pneumonia

    root, out = Path(shared_root).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import random

    rows = _pneumonia(root, out, random.Random(0))
    pneumonia = out / "pneumonia.csv"
    with open(pneumonia, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "image", "label", "split"])
        w.writeheader()
        w.writerows({"id": r["group"], "image": os.path.relpath(r["image"], out), "label": r["label"],
                     "split": r["split"]} for r in rows)
    manifest = shared_manifest(root, out / "seg_manifest.jsonl")
    kvasir = out / "kvasir.csv"
    with open(kvasir, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "image", "mask", "split"])
        w.writeheader()
        for line in manifest.read_text().splitlines():
            r = json.loads(line)
            if r["source"] == "kvasir":
                w.writerow({"id": Path(r["image"]).stem, "image": r["image"], "mask": r["mask"], "split": r["split"]})
    return [pneumonia, kvasir]
