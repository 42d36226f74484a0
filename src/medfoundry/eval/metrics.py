"""Metrics, computed by the libraries that maintain them: scikit-learn for classification, MONAI for masks.

Per-case functions return one number per case so that the bootstrap can resample cases (or patients).
"""

from __future__ import annotations

import warnings

import numpy as np

CLASSIFICATION_METRICS = ("auroc", "auprc", "f1", "balanced_accuracy", "accuracy", "ece")
SEGMENTATION_METRICS = ("dice", "iou", "hd95", "nsd")


def classification_metric(name: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """One metric for binary (scores (N,) of the positive class) or multi-class (scores (N, C)) problems.

    AUROC/AUPRC are macro one-vs-rest for several classes; F1 is macro; thresholds are the argmax (or 0.5).
    """
    from sklearn import metrics

    from medfoundry.tasks.calibration import expected_calibration_error

    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true)
    probs = np.stack([1 - scores, scores], axis=1) if scores.ndim == 1 else scores
    pred = probs.argmax(axis=1)
    if name == "auroc":
        return float(metrics.roc_auc_score(y_true, probs[:, 1]) if probs.shape[1] == 2 else
                     metrics.roc_auc_score(y_true, probs, multi_class="ovr"))
    if name == "auprc":
        if probs.shape[1] == 2:
            return float(metrics.average_precision_score(y_true, probs[:, 1]))
        onehot = np.eye(probs.shape[1])[y_true]
        return float(metrics.average_precision_score(onehot, probs, average="macro"))
    if name == "f1":
        return float(metrics.f1_score(y_true, pred, average="binary" if probs.shape[1] == 2 else "macro"))
    if name == "balanced_accuracy":
        return float(metrics.balanced_accuracy_score(y_true, pred))
    if name == "accuracy":
        return float(metrics.accuracy_score(y_true, pred))
    if name == "ece":
        return expected_calibration_error(probs, y_true)
    raise ValueError(f"unknown classification metric {name!r}")


def segmentation_case(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...],
                      tolerance_mm: float = 2.0) -> dict[str, float]:
    """Dice, IoU, HD95 (mm) and normalised surface Dice (at ``tolerance_mm``) of one case, through MONAI."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

    p = torch.from_numpy(np.asarray(pred, bool)[None, None].astype(np.float32))
    t = torch.from_numpy(np.asarray(truth, bool)[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # both masks empty: a perfect answer (1.0), not an undefined one
        dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
        iou = float(compute_iou(p, t, include_background=True, ignore_empty=False)[0, 0])
        if p.sum() and t.sum():
            hd95 = float(compute_hausdorff_distance(p, t, percentile=95, spacing=list(spacing))[0, 0])
            nsd = float(compute_surface_dice(p, t, class_thresholds=[tolerance_mm], spacing=list(spacing))[0, 0])
        else:
            hd95, nsd = float("nan"), 0.0
    return {"dice": dice, "iou": iou, "hd95": hd95, "nsd": nsd}
