"""Closed VQA with a contrastive model answering zero-shot, beside the majority answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medfoundry.cli.main import main
from medfoundry.eval.specs import load_spec


def test_a_contrastive_model_answers_closed_questions_zero_shot(tmp_path: Path) -> None:
    from test_tasks import _images

    from medfoundry.eval.tasks.vqa import vqa_metric

    table = _images(tmp_path)
    spec = tmp_path / "vqa.yaml"
    spec.write_text(f"name: vqa-zs\ntask: vqa-closed\nlabel_set: chest_finding\ndataset:\n  csv: {table}\n"
                    "  filter: {split: val}\nquestion: is there pneumonia?\nanswers: {pneumonia: 'yes', normal: 'no'}\n"
                    "metrics: [accuracy, balanced_accuracy, answer_rate]\nbootstrap: 30\n")
    out = tmp_path / "run"
    assert main(["eval", "--model", "medfoundry-clip-tiny", "--benchmark", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cases = res["per_case"]
    assert len(cases) == 8 and res["metrics"]["answer_rate"]["value"] == 1.0
    for c in cases:  # the answer of the most probable label (the order of `answers`: pneumonia, normal)
        assert c["answer"] == ("yes" if np.argmax(c["probs"]) == 0 else "no")
    parsed, expected = [c["parsed"] for c in cases], [c["expected"] for c in cases]
    assert res["metrics"]["accuracy"]["value"] == pytest.approx(vqa_metric("accuracy", parsed, expected))
    assert res["baseline"]["accuracy"] == 0.5


@pytest.mark.parametrize("name", ["medpix-vqa-modality", "medpix-vqa-plane", "medpix-vqa-region", "covid-vqa",
                                  "pneumonia-vqa"])
def test_builtin_vqa_specs_load(name: str) -> None:
    spec = load_spec(name)
    assert spec.task == "vqa-closed" and spec.question and len(set(spec.answers.values())) >= 2
