"""Supervised heads on frozen embeddings: a linear probe (scikit-learn logistic regression) and few-shot
class prototypes. Both are stored as plain JSON (weights as lists; no pickles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.files import load_dataclass_json, save_dataclass_json


@dataclass
class ProbeHead:
    """``kind`` "linear" (softmax(x W^T + b)) or "prototype" (softmax(scale · cos(x, class means)))."""

    model: str
    kind: str
    classes: list[str]
    weight: list[list[float]]
    bias: list[float]
    scale: float = 1.0

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) unit embeddings → (N, C) probabilities."""
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        logits = self.scale * (embeddings @ w.T) + b
        if len(self.classes) == 2 and w.shape[0] == 1:  # binary logistic regression
            p = 1 / (1 + np.exp(-logits[:, 0]))
            return np.stack([1 - p, p], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        return save_dataclass_json(self, path, overwrite)

    @classmethod
    def load(cls, path: str | Path) -> ProbeHead:
        return load_dataclass_json(cls, path, "probe")


def _check(embeddings: np.ndarray, labels: Sequence[str]) -> list[str]:
    if len(embeddings) != len(labels) or len(labels) == 0:
        raise InputContractError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise InputContractError("a probe needs at least two classes")
    return classes


def fit_linear_probe(model: str, embeddings: np.ndarray, labels: Sequence[str], c: float = 1.0) -> ProbeHead:
    """L2-regularised logistic regression on frozen embeddings (scikit-learn, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    classes = _check(embeddings, labels)
    clf = LogisticRegression(C=c, max_iter=5000).fit(embeddings, [classes.index(x) for x in labels])
    return ProbeHead(model, "linear", classes, clf.coef_.tolist(), clf.intercept_.tolist())


def fit_prototypes(model: str, embeddings: np.ndarray, labels: Sequence[str], scale: float = 20.0) -> ProbeHead:
    """Few-shot prototypes: the normalised mean embedding of each class."""
    classes = _check(embeddings, labels)
    y = np.asarray(labels)
    protos = np.stack([embeddings[y == k].mean(axis=0) for k in classes])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    return ProbeHead(model, "prototype", classes, protos.tolist(), [0.0] * len(classes), scale)
