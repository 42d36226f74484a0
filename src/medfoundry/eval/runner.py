"""Run a benchmark spec on a model: cached per-case predictions, metrics with bootstrap intervals, baselines,
subgroup gaps, and the resolved configuration — all in one JSON file beside an HTML report."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.eval.baselines import ellipse_in_box
from medfoundry.eval.bootstrap import bootstrap_ci
from medfoundry.eval.metrics import classification_metric, segmentation_case
from medfoundry.eval.specs import BenchmarkSpec, load_cases


def _code_version() -> str:
    import medfoundry

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(medfoundry.__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{medfoundry.__version__}+{sha}" if sha else medfoundry.__version__


def _cached(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {c["id"]: c for c in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}


def _run_cases(name: str, cases: list[dict], cache_path: Path, predict_one, progress: bool) -> list[dict]:
    """Predict every case not yet in the cache file, appending each result as soon as it exists."""
    from rich.progress import track

    done = _cached(cache_path)
    with open(cache_path, "a") as fh:
        for case in track(cases, description=name, disable=not progress):
            if case["id"] not in done:
                done[case["id"]] = {**case, **predict_one(case)}
                fh.write(json.dumps(done[case["id"]]) + "\n")
                fh.flush()
    return [done[c["id"]] for c in cases]


def _predict_classification(spec, cases, model, weights, cache_path, progress):
    from medfoundry.io import read_image
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.zero_shot import zero_shot_classify

    predictor = open_contrastive(model, weights)

    def predict_one(case: dict) -> dict:
        image = read_image(case["image"])
        image = image.slice(image.array.shape[0] // 2) if image.is_volume else image
        probs = zero_shot_classify(predictor, [image], spec.labels, templates=spec.templates or None).probs[0]
        return {"probs": probs.round(6).tolist()}

    return _run_cases(spec.name, cases, cache_path, predict_one, progress), predictor.record


def _predict_segmentation(spec, cases, model, weights, cache_path, progress):
    from medfoundry.io import read_image
    from medfoundry.predict.boxes import mask_box
    from medfoundry.predict.segment import open_segmenter

    segmenter = open_segmenter(model, weights)

    def predict_one(case: dict) -> dict:
        image, truth = read_image(case["image"]), read_image(case["mask"]).array > 0
        truth = truth[..., 0] if truth.ndim == 3 else truth
        box = mask_box(truth)
        segmenter.set_image(image)
        pred = segmenter.predict(boxes=box[None]).best()[0]
        return {"box": box.tolist(), "model": segmentation_case(pred, truth, image.spacing),
                "baseline": segmentation_case(ellipse_in_box(truth.shape, box), truth, image.spacing)}

    return _run_cases(spec.name, cases, cache_path, predict_one, progress), segmenter.record


def _summaries(spec: BenchmarkSpec, results: list[dict]) -> tuple[dict, dict, dict]:
    groups = [r["group"] for r in results] if spec.dataset.group else None
    metrics, baseline, subgroups = {}, {}, {}
    if spec.task == "zero-shot-classification":
        y = np.array([spec.labels.index(r["label"]) for r in results])
        probs = np.array([r["probs"] for r in results])
        constant = np.tile(np.bincount(y, minlength=len(spec.labels)) / len(y), (len(y), 1))

        def stat(name, scores):
            return lambda idx: classification_metric(name, y[idx], scores[idx])

        for name in spec.metrics:
            metrics[name] = {"value": stat(name, probs)(np.arange(len(y))),
                             "ci95": bootstrap_ci(stat(name, probs), len(y), groups, spec.bootstrap, spec.seed)}
            try:
                baseline[name] = stat(name, constant)(np.arange(len(y)))
            except ValueError:
                baseline[name] = None
        def sub_metric(idx):
            return (classification_metric(spec.metrics[0], y[idx], probs[idx]))
    else:
        for name in spec.metrics:
            per = np.array([r["model"][name] for r in results], dtype=np.float64)
            base = np.array([r["baseline"][name] for r in results], dtype=np.float64)

            def mean_of(values):
                return lambda idx: float(np.nanmean(values[idx]))

            metrics[name] = {"value": mean_of(per)(np.arange(len(per))),
                             "ci95": bootstrap_ci(mean_of(per), len(per), groups, spec.bootstrap, spec.seed)}
            baseline[name] = mean_of(base)(np.arange(len(base)))
        first = np.array([r["model"][spec.metrics[0]] for r in results], dtype=np.float64)
        def sub_metric(idx):
            return (float(np.nanmean(first[idx])))
    for column in spec.dataset.subgroups:
        values = np.array([r["subgroups"][column] for r in results])
        per_value = {}
        for v in sorted(set(values)):
            try:
                per_value[v] = sub_metric(np.nonzero(values == v)[0])
            except ValueError:
                per_value[v] = None
        valid = [x for x in per_value.values() if x is not None]
        subgroups[column] = {"metric": spec.metrics[0], "values": per_value,
                             "largest_gap": float(max(valid) - min(valid)) if len(valid) > 1 else None}
    return metrics, baseline, subgroups


def run_benchmark(spec: BenchmarkSpec, model: str, out: str | Path, weights: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Run ``spec`` with ``model``; writes ``out/results.json``, ``out/cases.jsonl`` (the resumable per-case
    cache) and ``out/report.html``. Returns the results dict."""
    from medfoundry.eval.report import write_report

    cases = load_cases(spec)  # every data problem is reported here, before any model work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cases.jsonl"
    if spec.task == "zero-shot-classification":
        results, record = _predict_classification(spec, cases, model, weights, cache, progress)
    elif spec.task == "segmentation-2d":
        results, record = _predict_segmentation(spec, cases, model, weights, cache, progress)
    else:  # pragma: no cover - load_spec rejects other tasks
        raise InputContractError(f"task {spec.task} has no runner")
    metrics, baseline, subgroups = _summaries(spec, results)
    dataset_sha = hashlib.sha256(Path(spec.dataset.csv).read_bytes()).hexdigest()
    report = {
        "benchmark": spec.name, "task": spec.task, "description": spec.description, "labels": spec.labels,
        "config": {"model": record.name, "weights": weights or (record.primary_weights.uri if record.primary_weights
                                                                else None),
                   "weights_sha256": next((w.sha256 for w in record.weights if w.sha256), None),
                   "dataset_csv": spec.dataset.csv, "dataset_sha256": dataset_sha, "code_version": _code_version(),
                   "seed": spec.seed, "bootstrap": spec.bootstrap, "spec": spec.source, "cases": len(results)},
        "metrics": metrics, "baseline": baseline, "subgroups": subgroups, "per_case": results,
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
