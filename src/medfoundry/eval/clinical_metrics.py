"""Clinical-efficacy (CE) metrics for generated reports: the findings extractor
(:mod:`medfoundry.tasks.findings`) reads the generated and the reference text, and the 14 CheXpert observations
found *positive* in each are compared (uncertain, negative and not mentioned count as not positive, as in the
usual CheXpert-labeller CE protocol).

- ``ce_precision`` / ``ce_recall`` / ``ce_f1``: micro-averaged over cases × observations, a corpus statistic over
  case indices, so the harness bootstraps it like the n-gram metrics;
- :func:`ce_per_observation`: precision/recall/F1 and support per observation (no interval; small supports).

A case whose reference names no positive observation contributes only false positives, so micro precision can
be 0 on texts (e.g. clinical histories) that rarely state chest findings; :func:`ce_coverage` says how many
references named any. Extraction is cached per text, so bootstrap resamples do not re-read the reports.
Install with ``pip install medfoundry[nlp]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from medfoundry.errors import InputContractError

CE_METRICS = ("ce_precision", "ce_recall", "ce_f1")
_CACHE: dict[str, frozenset[str]] = {}


def positives(texts: Sequence[str]) -> list[frozenset[str]]:
    """The positive observations of each text (cached; non-English or empty texts give an empty set)."""
    from medfoundry.tasks.findings import extract_findings_many

    todo = sorted({t for t in texts if t not in _CACHE})
    if todo:
        for t, r in zip(todo, extract_findings_many(todo, check_language=False), strict=True):
            _CACHE[t] = frozenset(r.positives("zero"))
    return [_CACHE[t] for t in texts]


def _counts(predictions: Sequence[str], references: Sequence[str], observation: str | None = None):
    if len(predictions) != len(references) or not predictions:
        raise InputContractError(f"{len(predictions)} predictions but {len(references)} references")
    tp = fp = fn = 0
    for p, r in zip(positives(predictions), positives(references), strict=True):
        if observation is not None:
            p, r = p & {observation}, r & {observation}
        tp, fp, fn = tp + len(p & r), fp + len(p - r), fn + len(r - p)
    return tp, fp, fn


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


def ce_metric(name: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """Micro-averaged CE precision, recall or F1 (``name`` in :data:`CE_METRICS`) of paired texts, in [0, 1]."""
    if name not in CE_METRICS:
        raise InputContractError(f"unknown clinical-efficacy metric {name!r} (known: {', '.join(CE_METRICS)})")
    return _prf(*_counts(predictions, references))[CE_METRICS.index(name)]


def ce_per_observation(predictions: Sequence[str], references: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per observation: precision, recall, F1 and support (references positive), for observations that at least
    one generated or reference text names positive."""
    from medfoundry.tasks.findings import OBSERVATIONS

    out = {}
    named = set().union(*positives(predictions), *positives(references))
    for o in OBSERVATIONS:
        if o in named:
            tp, fp, fn = _counts(predictions, references, o)
            p, r, f = _prf(tp, fp, fn)
            out[o] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "support": tp + fn}
    return out


def ce_coverage(references: Sequence[str]) -> float:
    """Fraction of reference texts in which the extractor finds at least one positive observation other than
    No Finding (a text that names no finding at all gets No Finding, which says little about it)."""
    pos = positives(references)
    return sum(bool(p - {"No Finding"}) for p in pos) / max(len(pos), 1)
