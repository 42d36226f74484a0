"""Benchmark specs (YAML): a dataset (CSV of cases), a task, labels and metrics — checked before any model work.

Example::

    name: kvasir-box
    task: segmentation-2d
    dataset:
      csv: ${MEDFOUNDRY_EVAL_DATA}/kvasir.csv   # columns image, mask[, group, split, ...]; paths relative to it
      filter: {split: val}
    metrics: [dice, iou, hd95, nsd]
    bootstrap: 1000

Tasks (see :mod:`medfoundry.eval.tasks`): ``zero-shot-classification``, ``linear-probe`` (fit on the rows of
``dataset.train_filter``, measured on ``dataset.filter``), ``retrieval`` (``mode`` image-to-image by label,
text-to-image or image-to-text by pair/patient), ``segmentation-2d`` and ``segmentation-3d`` (box on the key
slice, propagated), ``report-generation`` (reports retrieved from the texts of ``dataset.train_filter`` rows,
scored by BLEU/ROUGE-L/CIDEr), ``vqa-closed`` (``question`` asked of every case, its answer's first word
compared with ``answers[label]``). ``mask_of_truth: true`` adds the occlusion test to classification specs;
``label_set: NAME`` takes each label's prompts from the model record's label set of that name (models without
it fall back to ``templates``); a zero-shot spec with ``dataset.train_filter`` also fits logistic regression on
the raw pixels of those rows (a supervised raw-pixel baseline, reported beside the no-model one).

``${NAME}`` is replaced from the environment (``MEDFOUNDRY_EVAL_DATA`` defaults to ``eval-data``).
Every problem found (unknown keys, missing files, masks of another shape, unknown labels, no cases) is
collected and reported together by :class:`SpecError`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from medfoundry.errors import MedfoundryError
from medfoundry.eval.tasks import TASKS


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
    text: str = "text"
    group: str | None = None
    subgroups: list[str] = field(default_factory=list)
    filter: dict[str, str | list[str]] = field(default_factory=dict)  # column → value or list of accepted values
    train_filter: dict[str, str | list[str]] = field(default_factory=dict)  # linear-probe: rows that fit the probe
    image_key: str | None = None  # array name inside .npz images
    mask_key: str | None = None  # array name inside .npz masks
    mask_value: str | None = None  # column holding the label value that selects the object in a label map
    boxes: list[str] = field(default_factory=list)  # columns with [x, y, w, h] boxes of the annotated region


@dataclass
class BenchmarkSpec:
    name: str
    task: str
    dataset: DatasetSpec
    metrics: list[str]
    labels: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    label_set: str | None = None  # zero-shot: the model record's prompt ensembles for these labels, when it has them
    bootstrap: int = 1000
    seed: int = 0
    positive: str | None = None
    mode: str = "image-to-image"  # retrieval: image-to-image, text-to-image or image-to-text
    mask_of_truth: bool = False  # classification: occlude the annotated region vs an equal area elsewhere
    question: str = ""  # vqa-closed: asked of every case
    answers: dict[str, str] = field(default_factory=dict)  # vqa-closed: label → the answer it expects
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
    if task is not None and task not in TASKS:
        problems.append(f"task {task!r} is not supported (supported: {', '.join(TASKS)})")
    elif task is not None:
        problems += TASKS[task].check(data, ds)
    if problems:
        raise SpecError(str(path), problems)
    ds = {k: _expand(v) if isinstance(v, str) else v for k, v in ds.items()}
    if task == "vqa-closed" and not data.get("labels"):
        data = {**data, "labels": list(data["answers"])}  # rows with other labels are refused by load_cases
    source = f"builtin:{path_or_name}" if builtin else str(path)
    return BenchmarkSpec(**{**data, "dataset": DatasetSpec(**ds)}, source=source)


def _matches(row: dict[str, str], wanted: dict[str, str | list[str]]) -> bool:
    return all(row.get(k) in (v if isinstance(v, list) else [v]) for k, v in wanted.items())


def load_cases(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The spec's cases with resolved paths, after checking every file, label and mask shape."""
    from medfoundry.io import read_image

    ds = spec.dataset
    table = Path(ds.csv)
    if not table.is_file():
        raise SpecError(spec.source, [f"dataset file {table} does not exist"])
    with open(table, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if _matches(r, ds.filter)]
    problems: list[str] = []
    if not rows:
        raise SpecError(spec.source, [f"{table} has no cases (after filter {ds.filter})"])
    task = TASKS[spec.task]
    if ds.train_filter:
        with open(table, newline="", encoding="utf-8") as fh:
            train_rows = [r for r in csv.DictReader(fh) if _matches(r, ds.train_filter)]
        if not train_rows:
            problems.append(f"{table} has no training rows (train_filter {ds.train_filter})")
        rows = [{**r, "__role": "test"} for r in rows] + [{**r, "__role": "train"} for r in train_rows]
    needed = task.columns(spec) + ([ds.group] if ds.group else []) + ds.subgroups
    problems += [f"{table} lacks column {c!r}" for c in needed if c not in rows[0]]
    if problems:
        raise SpecError(spec.source, problems)
    cases = []
    for i, r in enumerate(rows):
        case = {"id": r.get("id") or Path(r[ds.image]).stem, "image": str(table.parent / r[ds.image]), "row": i,
                "group": r[ds.group] if ds.group else None, "subgroups": {s: r[s] for s in ds.subgroups},
                "role": r.get("__role", "test")}
        if not Path(case["image"]).exists():
            problems.append(f"row {i}: image {case['image']} does not exist")
        if ds.label in needed:
            if spec.labels and r[ds.label] not in spec.labels:
                problems.append(f"row {i}: label {r[ds.label]!r} is not one of {spec.labels}")
            case["label"] = r[ds.label]
        if ds.text in needed:
            case["text"] = r[ds.text]
            if not r[ds.text].strip():
                problems.append(f"row {i}: empty text")
        case["boxes"] = [json.loads(r[c]) for c in ds.boxes if r.get(c, "").strip()] if ds.boxes else []
        if ds.mask_value:
            case["mask_value"] = int(r[ds.mask_value])
        if ds.mask in needed:
            case["mask"] = str(table.parent / r[ds.mask])
            if not Path(case["mask"]).exists():
                problems.append(f"row {i}: mask {case['mask']} does not exist")
            elif Path(case["image"]).exists():
                shape = read_image(case["image"], key=ds.image_key).spatial_shape
                mshape = read_image(case["mask"], key=ds.mask_key).spatial_shape
                if shape != mshape:
                    problems.append(f"row {i}: mask shape {mshape} differs from image shape {shape}")
        cases.append(case)
    if len({c["id"] for c in cases}) != len(cases):
        problems.append("case ids are not unique (add an id column)")
    if problems:
        raise SpecError(spec.source, problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50
                                                       else []))
    return cases
