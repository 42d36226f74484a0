"""Text metrics for generated reports, computed by maintained packages: BLEU (sacrebleu), ROUGE-L (Google's
rouge-score) and CIDEr-D's consensus score (pycocoevalcap's CIDEr); the clinical-efficacy ``ce_*`` metrics
come from :mod:`medfoundry.eval.clinical_metrics` (the findings extractor on both texts).

Each metric is a corpus statistic over case indices, so the harness can bootstrap it like any other metric
(CIDEr's document frequencies and BLEU's brevity penalty are recomputed on every resample, as they should be).
Install with ``pip install medfoundry[text]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from medfoundry.errors import InputContractError

TEXT_METRICS = ("bleu", "bleu1", "rouge_l", "cider", "ce_precision", "ce_recall", "ce_f1")


def normalise(text: str) -> str:
    """Lower case, punctuation split off, whitespace collapsed (the tokenisation CIDEr and ROUGE see)."""
    return " ".join(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower()))


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise InputContractError(f"{len(predictions)} predictions but {len(references)} references")


def text_metric(name: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level ``name`` (one of :data:`TEXT_METRICS`) of paired predictions and single references, in [0, 1]
    (CIDEr is conventionally unbounded above, ≈ 0–10)."""
    _check(predictions, references)
    if name.startswith("ce_"):
        from medfoundry.eval.clinical_metrics import ce_metric

        return ce_metric(name, predictions, references)
    preds, refs = [normalise(p) for p in predictions], [normalise(r) for r in references]
    if name in ("bleu", "bleu1"):
        from sacrebleu.metrics import BLEU

        bleu = BLEU(max_ngram_order=4 if name == "bleu" else 1, tokenize="none", effective_order=True)
        return bleu.corpus_score(preds, [refs]).score / 100
    if name == "rouge_l":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        return float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]))
    if name == "cider":
        from pycocoevalcap.cider.cider import Cider

        score, _ = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)})
        return float(score)
    raise InputContractError(f"unknown text metric {name!r} (known: {', '.join(TEXT_METRICS)})")
