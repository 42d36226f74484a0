"""Zero-shot classification with prompt-template ensembles, single- or multi-label (CheXzero-style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.predict.contrastive import ContrastivePredictor


@dataclass
class ZeroShotResult:
    """Scores of N images over L labels.

    ``probs`` is (N, L): a softmax over labels in single-label mode (rows sum to 1), or per-label probabilities of
    "present" versus "absent" in multi-label mode (independent). ``uncertain`` marks rows whose top confidence
    is below the requested level.
    """

    labels: list[str]
    probs: np.ndarray
    multilabel: bool
    uncertain: np.ndarray

    def top(self, i: int) -> tuple[str, float]:
        j = int(np.argmax(self.probs[i]))
        return self.labels[j], float(self.probs[i, j])


def check_labels(labels: Sequence[str]) -> list[str]:
    """Strip and validate a label list: not empty, no empty names, no duplicates (case-insensitive)."""
    cleaned = [lab.strip() for lab in labels]
    if not cleaned or any(not lab for lab in cleaned):
        raise InputContractError("give at least one non-empty label")
    lowered = [lab.lower() for lab in cleaned]
    dupes = sorted({lab for lab in lowered if lowered.count(lab) > 1})
    if dupes:
        raise InputContractError(f"duplicate labels: {', '.join(dupes)}")
    return cleaned


def class_prototypes(predictor: ContrastivePredictor, labels: Sequence[str], templates: Sequence[str],
                     prompts: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """(L, D) unit vectors: the mean text embedding of each label over its prompts (prompt ensembling).

    A label's prompts are ``prompts[label]`` when given, else each template filled with the label.
    """
    per_label = [list(prompts[lab]) if prompts and lab in prompts else [t.format(lab) for t in templates]
                 for lab in labels]
    emb = predictor.embed_texts([t for texts in per_label for t in texts])
    protos, start = [], 0
    for texts in per_label:
        protos.append(emb[start : start + len(texts)].mean(axis=0))
        start += len(texts)
    out = np.stack(protos)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def label_set(predictor: ContrastivePredictor, name: str) -> dict[str, list[str]]:
    """The model record's label set ``name`` (class → prompts, in the record's order); InputContractError
    naming the sets it has when it lacks this one."""
    sets = predictor.record.label_sets
    if name not in sets:
        have = ", ".join(sorted(sets)) or "none"
        raise InputContractError(f"{predictor.record.name} has no label set {name!r} (it has: {have})")
    return {label: list(texts) for label, texts in sets[name].items()}


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def zero_shot_classify(
    predictor: ContrastivePredictor,
    images: Sequence[MedImage | str | Path],
    labels: Sequence[str],
    *,
    templates: Sequence[str] | None = None,
    negative_templates: Sequence[str] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
    multilabel: bool = False,
    temperature: float | None = None,
    uncertain_below: float | None = None,
) -> ZeroShotResult:
    """Score images against labels without any training.

    Templates default to the model record's (``"{}"`` if it has none). In multi-label mode each label is
    scored by a softmax over its positive and negative prompt (``negative_templates``, default
    ``"no {}"``), as CheXzero does. ``temperature`` divides the logits (calibration; default: the model's own
    logit scale). ``prompts`` gives labels their own prompt ensembles (label → texts, e.g. from
    :func:`label_set`); labels it lacks use the templates. Raises InputContractError for empty or duplicate labels.
    """
    labels = check_labels(labels)
    templates = list(templates or predictor.record.templates or ("{}",))
    image_emb = predictor.embed_images(images)
    scale = predictor.logit_scale if temperature is None else 1.0 / temperature
    if multilabel:
        negatives = list(negative_templates or predictor.record.negative_templates or ("no {}",))
        pos = class_prototypes(predictor, labels, templates, prompts)
        neg = class_prototypes(predictor, labels, negatives)
        logits = np.stack([image_emb @ pos.T, image_emb @ neg.T], axis=-1) * scale  # N, L, 2
        probs = _softmax(logits)[..., 0]
    else:
        probs = _softmax(scale * image_emb @ class_prototypes(predictor, labels, templates, prompts).T)
    confidence = probs.max(axis=1) if not multilabel else np.maximum(probs, 1 - probs).min(axis=1)
    uncertain = confidence < uncertain_below if uncertain_below is not None else np.zeros(len(probs), bool)
    return ZeroShotResult(labels, probs, multilabel, uncertain)
