"""Report generation by retrieval: the reports (or report sentences) of a bank, written for other images, that a
contrastive model finds closest to this image.

This is the retrieval family of report generators (CXR-RePaiR, Endo et al. 2021): it writes nothing new, so
every sentence it returns was written by a radiologist for some image, and each comes with the similarity that
chose it. The bank is a :class:`~medfoundry.tasks.retrieval.RetrievalIndex` holding texts, built with the same
contrastive model (``medfoundry index build --texts reports.csv``, or :func:`build_report_bank`). A sentence
bank (``sentences=True``, ``k`` of 3–5) covers more combinations of findings than a report bank but can join
sentences that contradict each other ("consolidation" beside "no acute process"): read the sources.
Measured by the ``report-generation`` benchmark task (BLEU, ROUGE-L, CIDEr against the written report, beside
the constant "most frequent report of the bank").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.tasks.retrieval import Hit, RetrievalIndex, add_texts


@dataclass
class GeneratedReport:
    """The report text and the bank entries it was made of (cosine similarity to the image, best first)."""

    text: str
    sources: list[Hit] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"report": self.text, "sources": [{"text": h.item, "similarity": round(h.score, 4)}
                                                 for h in self.sources]}


def split_sentences(text: str) -> list[str]:
    """Sentences of a report: split after ``.``, ``!`` or ``?`` followed by white space; blanks dropped."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def build_report_bank(predictor: Any, texts: Sequence[str], sentences: bool = False, batch: int = 256,
                      progress: bool = False) -> RetrievalIndex:
    """An in-memory bank of the unique ``texts`` (or of their unique sentences) embedded by ``predictor``'s text
    tower, ``batch`` texts at a time (with a progress bar if asked). Save it with ``.save(path)`` to reuse it."""
    units = [s for t in texts for s in (split_sentences(t) if sentences else [t.strip()]) if s]
    if not units:
        raise InputContractError("a report bank needs at least one non-empty text")
    bank = RetrievalIndex.for_predictor(predictor, predictor.embed_texts(units[:1]).shape[1])
    add_texts(bank, predictor, units, batch=batch, progress=progress)
    return bank


def most_frequent_text(texts: Sequence[str]) -> str:
    """The no-model baseline: the bank's most frequent report (first one on ties)."""
    if not texts:
        raise InputContractError("no texts")
    counts = Counter(t.strip() for t in texts)
    return max(dict.fromkeys(t.strip() for t in texts), key=lambda t: counts[t])


def generate_report(predictor: Any, image: MedImage, bank: RetrievalIndex, k: int = 1) -> GeneratedReport:
    """The ``k`` bank texts closest to ``image`` joined into one report (best first).

    Args:
        predictor: a :class:`~medfoundry.predict.contrastive.ContrastivePredictor` — the bank's model.
        image: a 2D image (slice volumes first).
        k: how many texts to join (1 for whole-report banks; 3–5 suit sentence banks).
    """
    if k < 1:
        raise InputContractError(f"k must be at least 1, got {k}")
    if bank.model != predictor.record.name:
        raise InputContractError(f"the report bank was built with {bank.model}, not {predictor.record.name}: "
                                 "rebuild it with this model")
    if not any(item["kind"] == "text" for item in bank.items):
        raise InputContractError("the report bank holds no texts (build it with --texts)")
    if image.is_volume:
        raise InputContractError("report generation takes a 2D image: pass image.slice(k)")
    hits = bank.search(predictor.embed_images([image])[0], k=k, kind="text")
    text = " ".join(h.item if h.item.rstrip().endswith((".", "!", "?")) else h.item.rstrip() + "."
                    for h in hits)
    return GeneratedReport(text, hits)
