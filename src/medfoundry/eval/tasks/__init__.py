"""The tasks a benchmark spec can name. Each task says which metrics and dataset columns it needs, and its
module (imported only when a benchmark runs) provides ``predict`` and ``summarise``:

- ``predict(spec, cases, model, weights, cache_path, progress) -> (results, record)``: one result dict per
  case, computed through the model and cached per case (resumable);
- ``summarise(spec, results) -> Summary``: for each metric a statistic over case indices (so the bootstrap can
  resample cases or patients) and its no-model baseline.

``report-generation`` scores retrieved reports with the text metrics of :mod:`medfoundry.eval.text_metrics`;
``vqa-closed`` asks a conversational model one closed question per case (:mod:`medfoundry.eval.tasks.vqa`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medfoundry.eval.metrics import CLASSIFICATION_METRICS, SEGMENTATION_METRICS
from medfoundry.eval.text_metrics import TEXT_METRICS

VQA_METRICS = ("accuracy", "balanced_accuracy", "answer_rate")  # see medfoundry.eval.tasks.vqa
RETRIEVAL_METRIC = re.compile(r"^(recall|precision)@([1-9][0-9]*)$|^map$")
RETRIEVAL_MODES = ("image-to-image", "text-to-image", "image-to-text")


@dataclass
class Summary:
    """What a task hands back to the runner.

    ``metrics[name](idx)`` computes the metric on the cases ``idx`` (an int array into ``per_case``);
    ``baseline[name]`` does the same for the no-model baseline (None where none exists); ``extra`` holds
    task-specific sections (e.g. the mask-of-truth test) that go into the results file as they are.
    """

    per_case: list[dict[str, Any]]
    metrics: dict[str, Callable[[np.ndarray], float]]
    baseline: dict[str, Callable[[np.ndarray], float] | None]
    baseline_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalTask:
    name: str
    module: str
    is_metric: Callable[[str], bool]
    columns: Callable[[Any], list[str]]
    check_extra: Callable[[dict, dict], list[str]] = lambda data, ds: []

    def check(self, data: dict, ds: dict) -> list[str]:
        """Problems of a raw spec mapping (``data``) and its dataset mapping (``ds``) for this task."""
        problems = [f"metric {m!r} does not apply to {self.name}" for m in data.get("metrics", []) or []
                    if not self.is_metric(m)]
        return problems + self.check_extra(data, ds)

    def runner(self):
        return importlib.import_module(self.module)


def _classification_check(data: dict, ds: dict) -> list[str]:
    problems = []
    if len(data.get("labels", []) or []) < 2:
        problems.append(f"{data.get('task')} needs at least two labels")
    elif len(set(data["labels"])) != len(data["labels"]):
        problems.append("labels are not unique")
    if data.get("task") == "linear-probe" and not ds.get("train_filter"):
        problems.append("linear-probe needs dataset.train_filter (the rows that fit the probe)")
    if data.get("mask_of_truth") and data.get("task") != "zero-shot-classification":
        problems.append("mask_of_truth applies to zero-shot-classification")
    if data.get("label_set") and data.get("task") != "zero-shot-classification":
        problems.append("label_set applies to zero-shot-classification")
    return problems


def _classification_columns(spec) -> list[str]:
    ds = spec.dataset
    extra = (ds.boxes or [ds.mask]) if spec.mask_of_truth else []
    return [ds.image, ds.label, *extra]


def _retrieval_check(data: dict, ds: dict) -> list[str]:
    mode = data.get("mode", "image-to-image")
    return [] if mode in RETRIEVAL_MODES else [f"retrieval mode {mode!r} is not one of {', '.join(RETRIEVAL_MODES)}"]


def _retrieval_columns(spec) -> list[str]:
    ds = spec.dataset
    return [ds.image, ds.label] if spec.mode == "image-to-image" else [ds.image, ds.text]


def _report_check(data: dict, ds: dict) -> list[str]:
    return [] if ds.get("train_filter") else ["report-generation needs dataset.train_filter (the rows whose "
                                              "texts form the report bank)"]


def _vqa_check(data: dict, ds: dict) -> list[str]:
    problems = [] if str(data.get("question", "")).strip() else ["vqa-closed needs a question"]
    answers = data.get("answers")
    if not isinstance(answers, dict) or len(set(map(str, (answers or {}).values()))) < 2:
        problems.append("vqa-closed needs answers: a mapping label → expected answer with at least two answers")
    if data.get("labels") and isinstance(answers, dict) and set(data["labels"]) != set(answers):
        problems.append("labels and the keys of answers differ")
    return problems


def _segmentation_columns(spec) -> list[str]:
    ds = spec.dataset
    return [ds.image, ds.mask] + ([ds.mask_value] if ds.mask_value else [])


TASKS: dict[str, EvalTask] = {
    "zero-shot-classification": EvalTask("zero-shot-classification", "medfoundry.eval.tasks.classification",
                                         CLASSIFICATION_METRICS.__contains__, _classification_columns,
                                         _classification_check),
    "linear-probe": EvalTask("linear-probe", "medfoundry.eval.tasks.classification",
                             CLASSIFICATION_METRICS.__contains__, _classification_columns, _classification_check),
    "retrieval": EvalTask("retrieval", "medfoundry.eval.tasks.retrieval",
                          lambda m: bool(RETRIEVAL_METRIC.match(m)), _retrieval_columns, _retrieval_check),
    "report-generation": EvalTask("report-generation", "medfoundry.eval.tasks.report", TEXT_METRICS.__contains__,
                                  lambda spec: [spec.dataset.image, spec.dataset.text], _report_check),
    "vqa-closed": EvalTask("vqa-closed", "medfoundry.eval.tasks.vqa", VQA_METRICS.__contains__,
                           lambda spec: [spec.dataset.image, spec.dataset.label], _vqa_check),
    "segmentation-2d": EvalTask("segmentation-2d", "medfoundry.eval.tasks.segmentation",
                                SEGMENTATION_METRICS.__contains__, _segmentation_columns),
    "segmentation-3d": EvalTask("segmentation-3d", "medfoundry.eval.tasks.segmentation",
                                SEGMENTATION_METRICS.__contains__, _segmentation_columns),
}


def read_2d(path: str, key: str | None = None):
    """A case's image as a 2D MedImage (a volume gives its middle slice)."""
    from medfoundry.io import read_image

    image = read_image(path, key=key)
    return image.slice(image.array.shape[0] // 2) if image.is_volume else image


def run_cases(name: str, cases: list[dict], cache_path, predict_one: Callable[[dict], dict],
              progress: bool) -> list[dict]:
    """Predict every case not yet in the cache file (JSON lines), appending each result as soon as it exists, so
    an interrupted run resumes where it stopped. Returns the results in case order."""
    import json
    from pathlib import Path

    from rich.progress import track

    path = Path(cache_path)
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption: recompute that case
                continue
            done[item["id"]] = item
    with open(path, "a") as fh:
        for case in track(cases, description=name, disable=not progress):
            if case["id"] not in done:
                done[case["id"]] = {**case, **predict_one(case)}
                fh.write(json.dumps(done[case["id"]]) + "\n")
                fh.flush()
    return [done[c["id"]] for c in cases]
