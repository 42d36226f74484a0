"""Run a benchmark spec on a model: cached per-case predictions, metrics with bootstrap intervals, baselines,
subgroup gaps, and the resolved configuration — all in one JSON file beside an HTML report."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.eval.bootstrap import bootstrap_ci
from medfoundry.eval.provenance import collect, dataset_hash
from medfoundry.eval.specs import BenchmarkSpec, load_cases
from medfoundry.eval.tasks import TASKS, CaseCache


def _summarise(spec: BenchmarkSpec, summary) -> tuple[dict, dict, dict]:
    """Values with bootstrap intervals, baselines and per-subgroup values (first metric) of a task summary."""
    results = summary.per_case
    n = len(results)
    every = np.arange(n)
    groups = [r["group"] for r in results] if spec.dataset.group else None
    metrics, baseline, subgroups = {}, {}, {}
    for name, stat in summary.metrics.items():
        metrics[name] = {"value": stat(every), "ci95": bootstrap_ci(stat, n, groups, spec.bootstrap, spec.seed)}
        base = summary.baseline.get(name)
        try:
            baseline[name] = None if base is None else base(every)
        except ValueError:
            baseline[name] = None
    first = summary.metrics[spec.metrics[0]]
    for column in spec.dataset.subgroups:
        values = np.array([r["subgroups"][column] for r in results])
        per_value = {}
        for v in sorted(set(values)):
            idx = np.nonzero(values == v)[0]
            try:
                value = first(idx)
            except ValueError:  # e.g. one class only in this subgroup
                value = None
            per_value[v] = {"value": value if value is not None and np.isfinite(value) else None, "cases": len(idx)}
        valid = [x["value"] for x in per_value.values() if x["value"] is not None]
        subgroups[column] = {"metric": spec.metrics[0], "values": per_value,
                             "largest_gap": float(max(valid) - min(valid)) if len(valid) > 1 else None}
    return metrics, baseline, subgroups


CASE_TEXT_KEYS = ("text", "reference", "generated")


def run_benchmark(spec: BenchmarkSpec, model: str, out: str | Path, weights: str | None = None,
                  progress: bool = True, omit_texts: bool = False) -> dict[str, Any]:
    """Run ``spec`` with ``model``; writes ``out/results.json``, ``out/cases.jsonl`` (the resumable per-case
    cache), ``out/report.html`` and, for segmentation, ``out/predictions/``. Returns the results dict.

    ``omit_texts`` leaves the cases' texts (reports, notes, generated reports) out of ``results.json`` and
    ``report.html`` — for publishing results on data whose texts may not be redistributed; the metrics are the
    same."""
    from medfoundry.eval.report import write_report

    cases = load_cases(spec)  # every data problem is reported here, before any model work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = TASKS[spec.task].runner()
    dataset = dataset_hash(spec.dataset.csv)
    settings = {k: v for k, v in asdict(spec).items() if k not in ("source", "description")}
    cache = CaseCache(out / "cases.jsonl", dataset["sha256"], settings)
    results, record = task.predict(spec, cases, model, weights, cache, progress)
    provenance = collect(name=record.name, weights=cache.weights, settings=settings) | {"dataset": dataset}
    summary = task.summarise(spec, results)
    with warnings.catch_warnings():  # a subgroup or resample with one class only is reported as n/a
        warnings.simplefilter("ignore", UserWarning)
        metrics, baseline, subgroups = _summarise(spec, summary)
    report = {
        "benchmark": spec.name, "task": spec.task, "description": spec.description, "labels": spec.labels,
        "config": {"model": record.name, "weights": weights or (record.primary_weights.uri if record.primary_weights
                                                                else None),
                   "weights_path": provenance["weights_path"],
                   "weights_sha256": provenance["weights_sha256"],  # of the file the model was built from
                   "dataset_csv": spec.dataset.csv, "dataset_sha256": dataset["sha256"],
                   "code_version": provenance["code"]["version"], "seed": spec.seed, "bootstrap": spec.bootstrap,
                   "spec": spec.source, "cases": len(summary.per_case), "cache_key": cache.key},
        "provenance": provenance,
        "dataset_keys": {"image": spec.dataset.image_key, "mask": spec.dataset.mask_key},
        "metrics": metrics, "baseline": baseline, "baseline_name": summary.baseline_name, "subgroups": subgroups,
        **summary.extra, "texts_omitted": omit_texts,
        "per_case": [{k: v for k, v in c.items() if k not in CASE_TEXT_KEYS} for c in summary.per_case]
        if omit_texts else summary.per_case,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    write_report(report, out / "report.html")
    return report


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Metric-by-metric comparison of two results files: values, difference, whether the 95 % intervals overlap."""
    rows = []
    for name in sorted(set(a["metrics"]) & set(b["metrics"])):
        ma, mb = a["metrics"][name], b["metrics"][name]
        (la, ha), (lb, hb) = ma["ci95"], mb["ci95"]
        rows.append({"metric": name, "a": ma["value"], "a_ci95": [la, ha], "b": mb["value"], "b_ci95": [lb, hb],
                     "difference": mb["value"] - ma["value"], "intervals_overlap": bool(la <= hb and lb <= ha)})
    return rows
