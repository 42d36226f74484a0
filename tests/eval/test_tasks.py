"""Harness tasks beyond the first two: linear probe, retrieval, 3D segmentation, mask of truth, text metrics
and the image-set distance — each metric against the library it wraps, each task run end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from medfoundry.cli.main import main
from medfoundry.eval.specs import SpecError, load_spec
from medfoundry.eval.tasks.classification import control_region, truth_region
from medfoundry.eval.tasks.retrieval import query_metric
from medfoundry.eval.text_metrics import text_metric
from medfoundry.tasks.report import most_frequent_text

RNG = np.random.default_rng(1)


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_metrics_agree_with_sklearn_and_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, relevant = rng.normal(size=40), rng.random(40) < 0.3  # negative scores too (cosines can be)
    relevant[0] = True
    assert query_metric("map", scores, relevant) == pytest.approx(skm.average_precision_score(relevant, scores))
    order = np.argsort(-scores)
    for k in (1, 5, 10):
        assert query_metric(f"recall@{k}", scores, relevant) == float(relevant[order[:k]].any())
        assert query_metric(f"precision@{k}", scores, relevant) == pytest.approx(relevant[order[:k]].mean())


def test_text_metrics_equal_their_reference_libraries() -> None:
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    from medfoundry.eval.text_metrics import normalise, text_metric

    words = ["heart", "lungs", "clear", "normal", "size", "effusion", "no", "acute", "opacity", "left", "base"]
    refs = [" ".join(RNG.choice(words, RNG.integers(5, 12))) for _ in range(20)]
    preds = [" ".join(RNG.choice(words, RNG.integers(4, 12))) for _ in range(20)]
    assert [normalise(r) for r in refs] == refs  # already normalised, so the libraries see the same strings
    bleu = BLEU(tokenize="none", effective_order=True).corpus_score(preds, [refs]).score / 100
    assert text_metric("bleu", preds, refs) == pytest.approx(bleu, abs=1e-12)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)])
    assert text_metric("rouge_l", preds, refs) == pytest.approx(rouge, abs=1e-12)
    cider, _ = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)})
    assert text_metric("cider", preds, refs) == pytest.approx(cider, abs=1e-12)
    assert text_metric("bleu", refs, refs) == pytest.approx(1.0) and text_metric("rouge_l", refs, refs) == 1.0
    assert text_metric("bleu", preds, refs) < 0.9


def test_control_region_has_the_same_area_outside_the_truth() -> None:
    case = {"boxes": [[5, 6, 10, 12], [30, 30, 8, 8]]}
    region = truth_region(case, (64, 64))
    assert region.sum() == 10 * 12 + 8 * 8
    control = control_region(region, np.random.default_rng(0))
    assert control.sum() == region.sum() and not (control & region).any()


def _images(tmp_path: Path, n: int = 16) -> Path:
    rows = []
    for i in range(n):
        sick = i % 2 == 1
        img = (RNG.normal(90, 8, (64, 64))).clip(0, 255).astype(np.uint8)
        if sick:  # a bright "opacity" in the right half
            img[20:44, 36:56] = 220
        Image.fromarray(img).save(tmp_path / f"c{i}.png")
        rows.append({"id": f"c{i}", "image": f"c{i}.png", "label": "pneumonia" if sick else "normal",
                     "text": "chest x-ray with pneumonia" if sick else "normal chest x-ray",
                     "patient": str(i // 2), "split": "train" if i < n // 2 else "val",
                     "box": json.dumps([36, 20, 20, 24])})
    with open(tmp_path / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path / "cases.csv"


def _run(tmp_path: Path, name: str, body: str, model: str = "medfoundry-clip-tiny") -> dict:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\n{body}\nbootstrap: 30\n")
    out = tmp_path / f"run-{name}"
    assert main(["eval", "--model", model, "--benchmark", str(spec), "--out", str(out)]) == 0
    assert (out / "report.html").stat().st_size > 2000
    return json.loads((out / "results.json").read_text())


def test_linear_probe_beats_or_matches_its_pixel_baseline_on_a_separable_toy_set(tmp_path: Path) -> None:
    table = _images(tmp_path)
    res = _run(tmp_path, "probe", f"task: linear-probe\ndataset:\n  csv: {table}\n  filter: {{split: val}}\n"
                                  f"  train_filter: {{split: train}}\nlabels: [normal, pneumonia]\n"
                                  f"metrics: [auroc, balanced_accuracy]")
    assert res["config"]["cases"] == 8 and res["per_case"][0]["train_cases"] == 8
    assert res["metrics"]["auroc"]["value"] == 1.0 and res["baseline"]["auroc"] == 1.0
    assert "raw pixels" in res["baseline_name"]


def test_retrieval_image_and_text_modes(tmp_path: Path) -> None:
    table = _images(tmp_path)
    res = _run(tmp_path, "i2i", f"task: retrieval\ndataset:\n  csv: {table}\nmetrics: [recall@1, precision@3, map]")
    assert res["config"]["cases"] == 16 and res["metrics"]["map"]["value"] > 0.9
    assert all(len(c["top5"]) == 5 and "embedding" not in c for c in res["per_case"])
    res = _run(tmp_path, "t2i", f"task: retrieval\nmode: text-to-image\ndataset:\n  csv: {table}\n  group: patient\n"
                                f"metrics: [recall@5, map]")
    assert 0 <= res["metrics"]["map"]["value"] <= 1 and "random" in res["baseline_name"]


def test_mask_of_truth_and_subgroups(tmp_path: Path) -> None:
    table = _images(tmp_path)
    res = _run(tmp_path, "mot", f"task: zero-shot-classification\ndataset:\n  csv: {table}\n  boxes: [box]\n"
                                f"  subgroups: [split]\nlabels: [normal, pneumonia]\nmask_of_truth: true\n"
                                f"metrics: [auroc]")
    section = res["mask_of_truth"]
    assert section["mean_region_fraction"] == pytest.approx(480 / 4096)
    assert 0 <= section["shift_truth_hidden"]["value"] <= 1 and len(section["shift_difference"]["ci95"]) == 2
    assert set(res["subgroups"]["split"]["values"]) == {"train", "val"}


def test_segmentation_3d_with_label_map_of_another_orientation(tmp_path: Path) -> None:
    zz, yy, xx = np.mgrid[0:9, 0:64, 0:64]
    ball = ((zz - 4) / 3.5) ** 2 + ((yy - 30) / 12) ** 2 + ((xx - 22) / 10) ** 2 <= 1
    ct = np.where(ball, 60.0, -900.0) + RNG.normal(0, 5, ball.shape)
    # NIfTI arrays are (X, Y, Z); the label map is stored with X flipped (an LAS-like affine)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(ct.transpose(2, 1, 0).astype(np.float32), affine), tmp_path / "ct.nii.gz")
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -1.0, 63.0
    labels = (ball * 7).astype(np.uint8).transpose(2, 1, 0)[::-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels), flipped), tmp_path / "seg.nii.gz")
    with open(tmp_path / "cases.csv", "w") as fh:
        fh.write("id,image,mask,value\nball,ct.nii.gz,seg.nii.gz,7\n")
    res = _run(tmp_path, "seg3d", f"task: segmentation-3d\ndataset:\n  csv: {tmp_path / 'cases.csv'}\n"
                                  f"  mask_value: value\nmetrics: [dice, hd95]", model="medfoundry-sam-lite")
    case = res["per_case"][0]
    assert case["key_slice"] == 4 and case["slices_true"] == [1, 7]
    assert res["baseline"]["dice"] > 0.9  # the truth, once flipped onto the CT grid, is the ball
    assert res["metrics"]["dice"]["value"] > 0.6 and (tmp_path / "run-seg3d" / "predictions" / "ball.npz").is_file()
    assert "along z" in (tmp_path / "run-seg3d" / "report.html").read_text()  # the cut through z beside the key slice


def test_new_task_spec_problems_are_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: linear-probe\ndataset: {csv: a.csv}\nlabels: [a]\nmetrics: [auroc, dice]\n"
                   "mask_of_truth: true\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    text = str(info.value)
    assert "train_filter" in text and "dice" in text and "two labels" in text
    bad.write_text("name: x\ntask: retrieval\nmode: sideways\ndataset: {csv: a.csv}\nmetrics: [recall@0, map]\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert "sideways" in str(info.value) and "recall@0" in str(info.value)


def test_image_set_distance_separates_different_sets(tmp_path: Path, capsys) -> None:
    from medfoundry.eval.distance import frechet_distance, image_set_distance

    a = RNG.normal(size=(200, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 2) == pytest.approx(12, rel=1e-6)  # mean shift of 2 in 3 dims
    for name, sigma in (("a", 4), ("b", 4), ("c", 40)):
        (tmp_path / name).mkdir()
        for i in range(12):
            noise = RNG.normal(128, sigma, (48, 48)).clip(0, 255).astype(np.uint8)
            Image.fromarray(noise).save(tmp_path / name / f"{i}.png")
    same = image_set_distance(sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png")))
    other = image_set_distance(sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "c").glob("*.png")))
    assert other["log_frd"] > same["log_frd"] + 3
    assert main(["eval", "distance", str(tmp_path / "a"), str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images_a"] == 12


def test_a_subgroup_with_one_class_is_reported_as_undefined(tmp_path: Path) -> None:
    table = _images(tmp_path)
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:  # subgroup "only-normal" holds normal images only: AUROC is undefined there
        r["site"] = "only-normal" if r["label"] == "normal" and int(r["id"][1:]) < 6 else "mixed"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = _run(tmp_path, "sub", f"task: zero-shot-classification\ndataset:\n  csv: {table}\n  subgroups: [site]\n"
                                f"labels: [normal, pneumonia]\nmetrics: [auroc]")
    values = res["subgroups"]["site"]["values"]
    assert values["only-normal"]["value"] is None and values["mixed"]["value"] is not None
    assert res["subgroups"]["site"]["largest_gap"] is None  # one defined value: no gap


def test_report_generation_scores_retrieved_reports_beside_the_constant_report(tmp_path: Path) -> None:
    table = _images(tmp_path)
    res = _run(tmp_path, "report", f"task: report-generation\ndataset:\n  csv: {table}\n  filter: {{split: val}}\n"
                                   f"  train_filter: {{split: train}}\nmetrics: [bleu, rouge_l, cider]")
    assert res["config"]["cases"] == 8 and res["bank_size"] == 2  # the bank holds the two distinct texts
    bank = {"chest x-ray with pneumonia.", "normal chest x-ray."}
    assert all(c["generated"] in bank for c in res["per_case"])
    assert "most frequent" in res["baseline_name"] and set(res["baseline"]) == {"bleu", "rouge_l", "cider"}
    # texts in this toy set are the bank's, so each retrieved report is right or exactly the other one
    right = sum(c["generated"].rstrip(".") == c["reference"] for c in res["per_case"])
    assert res["exact_matches"] == right
    gens, refs = [c["generated"] for c in res["per_case"]], [c["reference"] for c in res["per_case"]]
    assert res["metrics"]["rouge_l"]["value"] == pytest.approx(text_metric("rouge_l", gens, refs))
    assert res["baseline"]["rouge_l"] == pytest.approx(text_metric("rouge_l", [
        most_frequent_text(["normal chest x-ray", "chest x-ray with pneumonia"] * 4)] * 8, refs))


def test_report_generation_task_reports_ce_beside_the_constant_report(tmp_path: Path) -> None:
    pytest.importorskip("negspacy")
    from medfoundry.eval.clinical_metrics import ce_metric

    table = _images(tmp_path)
    res = _run(tmp_path, "report", f"task: report-generation\ndataset:\n  csv: {table}\n  filter: {{split: val}}\n"
                                   f"  train_filter: {{split: train}}\nmetrics: [bleu, ce_precision, ce_f1]")
    gens, refs = [c["generated"] for c in res["per_case"]], [c["reference"] for c in res["per_case"]]
    assert res["metrics"]["ce_f1"]["value"] == pytest.approx(ce_metric("ce_f1", gens, refs))
    lo, hi = res["metrics"]["ce_f1"]["ci95"]
    assert lo <= res["metrics"]["ce_f1"]["value"] <= hi
    assert res["baseline"]["ce_f1"] is not None
    ce = res["clinical_efficacy"]
    assert set(ce["per_observation"]) >= {"Pneumonia"} and "baseline_per_observation" in ce


def test_omit_texts_keeps_metrics_and_drops_every_case_text(tmp_path: Path) -> None:
    table = _images(tmp_path)
    spec = tmp_path / "r.yaml"
    spec.write_text(f"name: r\ntask: report-generation\ndataset:\n  csv: {table}\n  filter: {{split: val}}\n"
                    f"  train_filter: {{split: train}}\nmetrics: [rouge_l]\nbootstrap: 30\n")
    runs = {}
    for name, extra in (("full", []), ("omitted", ["--omit-texts"])):
        assert main(["eval", "--model", "medfoundry-clip-tiny", "--benchmark", str(spec), "--out",
                     str(tmp_path / name), *extra]) == 0
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert runs["omitted"]["metrics"] == runs["full"]["metrics"] and runs["omitted"]["texts_omitted"]
    published = (tmp_path / "omitted" / "results.json").read_text() + (tmp_path / "omitted" / "report.html").read_text()
    assert "chest x-ray" not in published and "chest x-ray" in (tmp_path / "full" / "results.json").read_text()


def test_report_generation_spec_needs_a_bank(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: report-generation\ndataset: {csv: a.csv}\nmetrics: [bleu, dice]\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert "train_filter" in str(info.value) and "dice" in str(info.value)


def test_vqa_answers_are_parsed_by_their_first_words() -> None:
    from medfoundry.eval.tasks.vqa import parse_answer, vqa_metric

    allowed = ["yes", "no", "no finding"]
    assert parse_answer("Yes, there is a consolidation.", allowed) == "yes"
    assert parse_answer("NO.", allowed) == "no"
    assert parse_answer("No finding", allowed) == "no finding"  # the longer answer first
    assert parse_answer("The lungs are clear; no.", allowed) is None
    assert parse_answer("", allowed) is None
    pred, want = ["yes", None, "no", "yes"], ["yes", "yes", "no", "no"]
    assert vqa_metric("accuracy", pred, want) == 0.5
    assert vqa_metric("balanced_accuracy", pred, want) == pytest.approx((0.5 + 0.5) / 2)
    assert vqa_metric("answer_rate", pred, want) == 0.75


def test_vqa_closed_runs_a_conversational_model_beside_the_majority_answer(tmp_path: Path, tiny_llava) -> None:
    from medfoundry.eval.tasks.vqa import parse_answer, vqa_metric
    from medfoundry.registry.loading import write_checkpoint_record
    from tiny_llava import record

    table = _images(tmp_path)
    write_checkpoint_record(record(), tmp_path / "chat")
    spec = tmp_path / "vqa.yaml"
    spec.write_text(f"name: vqa\ntask: vqa-closed\ndataset:\n  csv: {table}\n  filter: {{split: val}}\n"
                    "question: is there a lesion ?\nanswers: {pneumonia: 'yes', normal: 'no'}\n"
                    "metrics: [accuracy, balanced_accuracy, answer_rate]\nbootstrap: 30\n")
    out = tmp_path / "run"
    assert main(["eval", "--model", f"local-dir:{tmp_path / 'chat'}", "--weights", f"local-dir:{tiny_llava[2]}",
                 "--benchmark", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cases = res["per_case"]
    assert len(cases) == 8 and all(c["expected"] == {"pneumonia": "yes", "normal": "no"}[c["label"]] for c in cases)
    assert all(c["parsed"] == parse_answer(c["answer"], ["no", "yes"]) for c in cases)
    parsed, expected = [c["parsed"] for c in cases], [c["expected"] for c in cases]
    for name in ("accuracy", "balanced_accuracy", "answer_rate"):
        assert res["metrics"][name]["value"] == pytest.approx(vqa_metric(name, parsed, expected))
    assert res["baseline"]["accuracy"] == 0.5 and res["baseline"]["balanced_accuracy"] == 0.5  # 4 and 4
    assert "expected \\ answered" in (out / "report.html").read_text()


def test_vqa_spec_problems_are_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: vqa-closed\ndataset: {csv: a.csv}\nanswers: {a: 'yes'}\nmetrics: [accuracy, bleu]\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert "question" in str(info.value) and "at least two answers" in str(info.value) and "bleu" in str(info.value)
    assert load_spec("pneumonia-vqa").labels == ["pneumonia", "normal"]


def test_zero_shot_with_the_model_label_set_and_a_raw_pixel_baseline(tmp_path: Path) -> None:
    table = _images(tmp_path)
    res = _run(tmp_path, "zs-set", f"task: zero-shot-classification\nlabel_set: chest_finding\ndataset:\n"
                                   f"  csv: {table}\n  filter: {{split: val}}\n  train_filter: {{split: train}}\n"
                                   f"labels: [normal, pneumonia]\nmetrics: [auroc, accuracy]")
    assert res["config"]["cases"] == 8 and all(c["prompts"] == "label_set" for c in res["per_case"])
    pixel = res["raw_pixel_baseline"]
    assert pixel["auroc"]["value"] == 1.0 and len(pixel["accuracy"]["ci95"]) == 2  # the toy set is separable
    assert "class prevalence" in res["baseline_name"] and res["baseline"]["auroc"] == 0.5
    with pytest.raises(SpecError, match="label_set applies to zero-shot"):
        spec = tmp_path / "bad.yaml"
        spec.write_text(f"name: bad\ntask: linear-probe\nlabel_set: modality\ndataset:\n  csv: {table}\n"
                        f"  train_filter: {{split: train}}\nlabels: [normal, pneumonia]\nmetrics: [auroc]\n")
        load_spec(spec)
