"""Benchmark specs (YAML): a dataset (CSV of cases), a task, labels and metrics — checked before any model work.

Example::

    name: kvasir-box
    task: segmentation-2d
    dataset:
      csv: ${MEDFOUNDRY_EVAL_DATA}/kvasir.csv   # columns image, mask[, group, split, ...]; paths relative to it
      filter: {split: val}
    metrics: [dice, iou, hd95, nsd]
    bootstrap: 1000

``${NAME}`` is replaced from the environment (``MEDFOUNDRY_EVAL_DATA`` defaults to ``eval-data``).
Every problem found (unknown keys, missing files, masks of another shape, unknown labels, no cases) is
collected and reported together by :class:`SpecError`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from medfoundry.errors import MedfoundryError
from medfoundry.eval.metrics import CLASSIFICATION_METRICS, SEGMENTATION_METRICS

TASK_METRICS = {
    "zero-shot-classification": CLASSIFICATION_METRICS,
    "segmentation-2d": SEGMENTATION_METRICS,
}


class SpecError(MedfoundryError):
    """A benchmark spec or its dataset has problems; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s): " + "; ".join(problems))


@dataclass
class DatasetSpec:
    csv: str
    image: str = "image"
    label: str = "label"
    mask: str = "mask"
    group: str | None = None
    subgroups: list[str] = field(default_factory=list)
    filter: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchmarkSpec:
    name: str
    task: str
    dataset: DatasetSpec
    metrics: list[str]
    labels: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    bootstrap: int = 1000
    seed: int = 0
    positive: str | None = None
    description: str = ""
    source: str = ""


def _expand(text: str) -> str:
    env = {"MEDFOUNDRY_EVAL_DATA": "eval-data", **os.environ}
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), text)


def builtin_specs() -> dict[str, Path]:
    """Specs shipped with medfoundry, by name (``medfoundry eval --benchmark NAME``)."""
    folder = resources.files("medfoundry.eval") / "specs"
    return {p.name.removesuffix(".yaml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_spec(path_or_name: str | Path) -> BenchmarkSpec:
    """Parse a spec file (or a built-in spec's name), rejecting unknown keys and unsupported tasks/metrics."""
    import yaml

    builtin = builtin_specs().get(str(path_or_name))
    path = builtin or Path(path_or_name)
    if not path.is_file():
        raise SpecError(str(path_or_name), [f"no spec file and no built-in benchmark {str(path_or_name)!r} "
                                            f"(built-in: {', '.join(sorted(builtin_specs()))})"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"not valid YAML: {exc}"]) from exc
    problems = []
    known = {f.name for f in fields(BenchmarkSpec)} - {"source"}
    problems += [f"unknown key {k!r}" for k in sorted(set(data) - known)]
    ds = data.get("dataset") or {}
    if not isinstance(ds, dict):
        problems.append("dataset must be a mapping")
        ds = {}
    problems += [f"unknown dataset key {k!r}" for k in sorted(set(ds) - {f.name for f in fields(DatasetSpec)})]
    for key in ("name", "task", "metrics"):
        if key not in data:
            problems.append(f"missing key {key!r}")
    if "csv" not in ds:
        problems.append("missing dataset.csv")
    task = data.get("task")
    if task is not None and task not in TASK_METRICS:
        problems.append(f"task {task!r} is not supported (supported: {', '.join(TASK_METRICS)})")
    elif task is not None:
        problems += [f"metric {m!r} does not apply to {task}" for m in data.get("metrics", [])
                     if m not in TASK_METRICS[task]]
    if task == "zero-shot-classification" and len(data.get("labels", [])) < 2:
        problems.append("zero-shot classification needs at least two labels")
    if problems:
        raise SpecError(str(path), problems)
    ds = {k: _expand(v) if isinstance(v, str) else v for k, v in ds.items()}
    source = f"builtin:{path_or_name}" if builtin else str(path)
    return BenchmarkSpec(**{**data, "dataset": DatasetSpec(**ds)}, source=source)


def load_cases(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The spec's cases with resolved paths, after checking every file, label and mask shape."""
    from medfoundry.io import read_image

    ds = spec.dataset
    table = Path(ds.csv)
    if not table.is_file():
        raise SpecError(spec.source, [f"dataset file {table} does not exist"])
    with open(table, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if all(r.get(k) == v for k, v in ds.filter.items())]
    problems: list[str] = []
    if not rows:
        raise SpecError(spec.source, [f"{table} has no cases (after filter {ds.filter})"])
    needed = [ds.image] + ([ds.label] if spec.task.endswith("classification") else [ds.mask])
    needed += ([ds.group] if ds.group else []) + ds.subgroups
    problems += [f"{table} lacks column {c!r}" for c in needed if c not in rows[0]]
    if problems:
        raise SpecError(spec.source, problems)
    cases = []
    for i, r in enumerate(rows):
        case = {"id": r.get("id") or Path(r[ds.image]).stem, "image": str(table.parent / r[ds.image]), "row": i,
                "group": r[ds.group] if ds.group else None, "subgroups": {s: r[s] for s in ds.subgroups}}
        if not Path(case["image"]).exists():
            problems.append(f"row {i}: image {case['image']} does not exist")
        if spec.task.endswith("classification"):
            if r[ds.label] not in spec.labels:
                problems.append(f"row {i}: label {r[ds.label]!r} is not one of {spec.labels}")
            case["label"] = r[ds.label]
        else:
            case["mask"] = str(table.parent / r[ds.mask])
            if not Path(case["mask"]).exists():
                problems.append(f"row {i}: mask {case['mask']} does not exist")
            elif Path(case["image"]).exists():
                shape = read_image(case["image"]).spatial_shape
                mshape = read_image(case["mask"]).spatial_shape
                if shape != mshape:
                    problems.append(f"row {i}: mask shape {mshape} differs from image shape {shape}")
        cases.append(case)
    if problems:
        raise SpecError(spec.source, problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50
                                                       else []))
    return cases
