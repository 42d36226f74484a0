"""Calibrated confidence for zero-shot classification: temperature scaling, ECE and reliability diagrams.

A calibration is fitted on a small labelled set and stored as JSON (model, labels, templates, temperature,
ECE before and after). ``zero_shot_classify(..., temperature=cal.temperature)`` then applies it, and an
``uncertain_below`` level turns low-confidence answers into "uncertain".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.files import load_dataclass_json, save_dataclass_json


@dataclass
class Calibration:
    """A fitted temperature for one model, label list and template set."""

    model: str
    labels: list[str]
    templates: list[str]
    temperature: float
    ece_before: float
    ece_after: float
    cases: int

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        return save_dataclass_json(self, path, overwrite)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return load_dataclass_json(cls, path, "calibration")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the bin-weighted gap between confidence and accuracy over ``bins`` equal-width bins
    (torchmetrics' ``multiclass_calibration_error`` with the L1 norm). ``probs`` (N, C), ``labels`` (N,)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    return float(multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels).long(),
                                              num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def fit_temperature(similarities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(similarities / T) (1-D search)."""
    from scipy.optimize import minimize_scalar

    sims, labels = np.asarray(similarities, np.float64), np.asarray(labels)

    def nll(log_t: float) -> float:
        p = softmax(sims / np.exp(log_t))
        return float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded").x))


def calibrate(predictor, images: Sequence, truths: Sequence[str], labels: Sequence[str],
              templates: Sequence[str] | None = None) -> Calibration:
    """Fit a temperature on labelled images (``truths`` are label names from ``labels``)."""
    from medfoundry.tasks.zero_shot import check_labels, class_prototypes

    labels = check_labels(labels)
    unknown = sorted(set(truths) - set(labels))
    if unknown:
        raise InputContractError(f"labels {unknown} of the calibration set are not among {labels}")
    if len(images) < 10:
        raise InputContractError("calibrate on at least 10 labelled images")
    templates = list(templates or predictor.record.templates or ("{}",))
    sims = predictor.embed_images(images) @ class_prototypes(predictor, labels, templates).T
    y = np.array([labels.index(t) for t in truths])
    before = expected_calibration_error(softmax(sims * predictor.logit_scale), y)
    temperature = fit_temperature(sims, y)
    after = expected_calibration_error(softmax(sims / temperature), y)
    return Calibration(predictor.record.name, labels, templates, temperature, before, after, len(y))


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, path: str | Path, title: str, bins: int = 10) -> None:
    """Save a reliability diagram (accuracy per confidence bin against the diagonal) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    centres, accs = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            centres.append((lo + hi) / 2)
            accs.append(correct[sel].mean())
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(centres, accs, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
