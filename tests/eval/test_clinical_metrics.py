"""Clinical-efficacy metrics: the findings extractor on generated and reference texts, micro P/R/F1."""

from __future__ import annotations

import pytest

pytest.importorskip("negspacy")

from medfoundry.eval.clinical_metrics import ce_coverage, ce_metric, ce_per_observation
from medfoundry.eval.text_metrics import TEXT_METRICS, text_metric


def test_ce_micro_scores():
    refs = ["Cardiomegaly. Small left pleural effusion.", "No acute disease. Lungs are clear."]
    gens = ["Mild cardiomegaly. No pleural effusion.", "Right lower lobe pneumonia."]
    p = ce_metric("ce_precision", gens, refs)
    r = ce_metric("ce_recall", gens, refs)
    f = ce_metric("ce_f1", gens, refs)
    assert r == pytest.approx(1 / 3)
    assert 0 < p < 1 and f == pytest.approx(2 * p * r / (p + r))
    assert ce_metric("ce_f1", refs, refs) == 1.0
    assert text_metric("ce_f1", refs, refs) == 1.0 and "ce_f1" in TEXT_METRICS
    per = ce_per_observation(gens, refs)
    assert per["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per["Pleural Effusion"]["recall"] == 0.0
    assert ce_coverage(refs) == 0.5 and ce_coverage(["", "Patient is a 60 year old man."]) == 0.0

