"""Evaluation harness: metrics equal their reference libraries, specs fail early with every problem listed,
runs are resumable and reproducible, compare reports overlaps."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from medfoundry.cli.main import main
from medfoundry.eval.bootstrap import bootstrap_ci
from medfoundry.eval.metrics import classification_metric, segmentation_case
from medfoundry.eval.specs import SpecError, load_cases, load_spec

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    assert classification_metric("auroc", y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert classification_metric("auprc", y, s) == pytest.approx(skm.average_precision_score(y, s))
    assert classification_metric("f1", y, s) == pytest.approx(skm.f1_score(y, s > 0.5))
    assert classification_metric("balanced_accuracy", y, s) == pytest.approx(skm.balanced_accuracy_score(y, s > 0.5))
    y3 = rng.integers(0, 3, 200)
    p3 = rng.dirichlet(np.ones(3), 200)
    assert classification_metric("auroc", y3, p3) == pytest.approx(skm.roc_auc_score(y3, p3, multi_class="ovr"))


def test_segmentation_metrics_by_hand_and_monai() -> None:
    a = np.zeros((40, 40), bool)
    b = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b[10:20, 12:22] = True
    m = segmentation_case(a, b, (1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 80 / 200)
    assert m["iou"] == pytest.approx(80 / 120)
    assert m["hd95"] == pytest.approx(2.0)
    same = segmentation_case(a, a, (0.5, 0.5))
    assert same["dice"] == 1.0 and same["hd95"] == 0.0 and same["nsd"] == 1.0
    empty = segmentation_case(np.zeros_like(a), np.zeros_like(a), (1.0, 1.0))
    assert empty["dice"] == 1.0 and empty["iou"] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_dice_and_iou_equal_their_definitions_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.random((3, 30, 30)) < 0.3, rng.random((3, 30, 30)) < 0.4
    m = segmentation_case(a, b, (2.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    assert m["iou"] == pytest.approx((a & b).sum() / (a | b).sum(), abs=1e-6)


def test_bootstrap_interval_contains_the_mean_and_respects_groups() -> None:
    values = RNG.normal(1.0, 0.2, 300)
    lo, hi = bootstrap_ci(lambda idx: values[idx].mean(), len(values), n=300)
    assert lo < values.mean() < hi and hi - lo < 0.1
    groups = np.repeat(np.arange(10), 30)  # strongly clustered values: wider interval by patient
    clustered = groups.astype(float) + RNG.normal(0, 0.01, 300)
    lo_g, hi_g = bootstrap_ci(lambda idx: clustered[idx].mean(), 300, groups=groups, n=300)
    lo_c, hi_c = bootstrap_ci(lambda idx: clustered[idx].mean(), 300, n=300)
    assert hi_g - lo_g > hi_c - lo_c


def _dataset(tmp_path: Path, bad: bool = False) -> Path:
    rows = []
    for i in range(12):
        img = np.zeros((48, 48), np.uint8)
        img[10:30, 12:34] = 230
        Image.fromarray(img).save(tmp_path / f"i{i}.png")
        mask = np.zeros((48, 48) if not (bad and i == 3) else (40, 40), np.uint8)
        mask[10:30, 12:34] = 255
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append({"image": f"i{i}.png", "mask": f"m{i}.png", "label": "pneumonia" if i % 2 else "normal",
                     "patient": str(i // 2), "sex": "F" if i % 3 else "M"})
    if bad:
        rows[5]["image"] = "missing.png"
        rows[7]["label"] = "effusion"
    with open(tmp_path / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path / "cases.csv"


def _spec(tmp_path: Path, task: str, extra: str = "") -> Path:
    body = {"segmentation-2d": "metrics: [dice, iou, hd95, nsd]",
            "zero-shot-classification": "labels: [normal, pneumonia]\nmetrics: [auroc, ece]"}[task]
    path = tmp_path / f"{task}.yaml"
    path.write_text(f"name: toy\ntask: {task}\ndataset:\n  csv: {tmp_path / 'cases.csv'}\n  group: patient\n"
                    f"  subgroups: [sex]\n{body}\nbootstrap: 50\n{extra}")
    return path


def test_spec_problems_are_all_listed_before_model_work(tmp_path: Path) -> None:
    _dataset(tmp_path, bad=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: segmentation-2d\ndataset: {csv: nowhere.csv, colour: red}\nmetrics: [auroc]\n"
                   "extra: 1\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    text = str(info.value)
    assert "unknown key 'extra'" in text and "colour" in text and "auroc" in text
    with pytest.raises(SpecError) as info:
        load_cases(load_spec(_spec(tmp_path, "segmentation-2d")))
    assert "missing.png" in str(info.value) and "mask shape" in str(info.value)
    with pytest.raises(SpecError, match="effusion"):
        load_cases(load_spec(_spec(tmp_path, "zero-shot-classification")))


def test_segmentation_run_resume_and_compare(tmp_path: Path, capsys) -> None:
    _dataset(tmp_path)
    out = tmp_path / "run"
    assert main(["eval", "--model", "medfoundry-sam-lite", "--benchmark", str(_spec(tmp_path, "segmentation-2d")),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["dice"]["value"] > 0.8 and results["baseline"]["dice"] < 1
    assert results["config"]["weights_sha256"] and results["config"]["dataset_sha256"]
    assert "sex" in results["subgroups"] and (out / "report.html").stat().st_size > 1000
    assert len((out / "cases.jsonl").read_text().splitlines()) == 13  # the cache key, then one line per case
    assert main(["eval", "--model", "medfoundry-sam-lite", "--benchmark", str(_spec(tmp_path, "segmentation-2d")),
                 "--out", str(out)]) == 0  # resumed: nothing recomputed
    assert len((out / "cases.jsonl").read_text().splitlines()) == 13
    capsys.readouterr()
    assert main(["eval", "compare", str(out / "results.json"), str(out / "results.json")]) == 0
    assert "True" in capsys.readouterr().out


def test_classification_run(tmp_path: Path) -> None:
    _dataset(tmp_path)
    out = tmp_path / "zs"
    assert main(["eval", "--model", "medfoundry-clip-tiny", "--benchmark",
                 str(_spec(tmp_path, "zero-shot-classification")), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"auroc", "ece"} and results["baseline"]["auroc"] == 0.5


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_ece_equals_its_definition(classes: int) -> None:
    """ECE (torchmetrics) against the written-out definition: Σ_bins |bin|/N · |mean confidence − accuracy|."""
    from medfoundry.tasks.calibration import expected_calibration_error

    probs = RNG.dirichlet(np.ones(classes) * 0.7, size=400)
    labels = RNG.integers(0, classes, 400)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    expected = sum(((conf > lo) & (conf <= hi)).mean() * abs(conf[(conf > lo) & (conf <= hi)].mean()
                                                           - (pred == labels)[(conf > lo) & (conf <= hi)].mean())
                   for lo, hi in itertools.pairwise(edges) if ((conf > lo) & (conf <= hi)).any())
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)
