"""Zero-shot normal-vs-pneumonia AUROC on PneumoniaMNIST images never used in training, beside baselines.

- model: the embedded CLIP-style model, prompts from its record's templates, labels "normal" / "pneumonia";
- baseline: logistic regression on the raw 28×28 pixels of the training split (scikit-learn);
- baseline: a small supervised CNN trained on the training split (3 conv layers, 15 epochs, seed 0);
- trivial: a constant score (AUROC 0.5).
All scored on the developer part's ``val`` split (270 images), which the embedded model never saw.

    python benchmarks/zero_shot_pneumonia.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from medfoundry.eval.provenance import collect
from medfoundry.io import MedImage
from medfoundry.predict.contrastive import open_contrastive
from medfoundry.tasks.zero_shot import zero_shot_classify


def small_cnn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))
    x = torch.from_numpy(train_x[:, None] / 255.0).float()
    y = torch.from_numpy(train_y).float()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(15):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(test_x[:, None] / 255.0).float())[:, 0]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--model", default="medfoundry-clip-tiny")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default="benchmarks/results/zero_shot_pneumonia.json")
    args = ap.parse_args()
    data = np.load(Path(args.shared) / "pneumoniamnist_balanced" / "pneumoniamnist_balanced_trainval.npz")
    train_x, train_y = data["train_images"], data["train_labels"][:, 0]
    test_x, test_y = data["val_images"], data["val_labels"][:, 0]

    predictor = open_contrastive(args.model, args.weights)
    images = [MedImage(array=im, spacing=(1.0, 1.0), modality="CR") for im in test_x]
    result = zero_shot_classify(predictor, images, ["normal", "pneumonia"])
    model_score = result.probs[:, 1]
    lr = LogisticRegression(max_iter=2000, C=0.1).fit(train_x.reshape(len(train_x), -1) / 255.0, train_y)
    lr_score = lr.predict_proba(test_x.reshape(len(test_x), -1) / 255.0)[:, 1]
    cnn_score = small_cnn(train_x, train_y, test_x)
    scores = {"zero_shot_model": model_score, "baseline_logreg_pixels": lr_score, "baseline_small_cnn": cnn_score,
              "trivial_constant": np.zeros_like(model_score)}
    aurocs = {k: float(roc_auc_score(test_y, v)) for k, v in scores.items()}
    accuracy = float(((model_score > 0.5) == test_y).mean())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # calibration: fit a temperature on one half of the val split, measure ECE on the other half
    from medfoundry.tasks.calibration import calibrate, expected_calibration_error, reliability_diagram, softmax
    from medfoundry.tasks.zero_shot import class_prototypes

    rng = np.random.default_rng(0)
    order = rng.permutation(len(test_y))
    fit_idx, eval_idx = order[: len(order) // 2], order[len(order) // 2 :]
    names = ["normal", "pneumonia"]
    cal = calibrate(predictor, [images[i] for i in fit_idx], [names[test_y[i]] for i in fit_idx], names)
    sims = predictor.embed_images([images[i] for i in eval_idx]) @ class_prototypes(predictor, names,
                                                                                   cal.templates).T
    raw, calibrated = softmax(sims * predictor.logit_scale), softmax(sims / cal.temperature)
    calibration = {"fit_cases": len(fit_idx), "eval_cases": len(eval_idx), "temperature": cal.temperature,
                   "model_logit_scale": predictor.logit_scale,
                   "ece_before": expected_calibration_error(raw, test_y[eval_idx]),
                   "ece_after": expected_calibration_error(calibrated, test_y[eval_idx])}
    before_png = out.with_name(out.stem + "_reliability_before.png")
    reliability_diagram(raw, test_y[eval_idx], before_png, "before calibration")
    reliability_diagram(calibrated, test_y[eval_idx], out.with_name(out.stem + "_reliability_after.png"),
                        f"after temperature scaling (T={cal.temperature:.3f})")
    summary = {"benchmark": "PneumoniaMNIST (balanced) val split, 270 images never used to train the model",
               "model": predictor.record.name, "labels": ["normal", "pneumonia"],
               "templates": list(predictor.record.templates), "auroc": aurocs,
               "zero_shot_accuracy_at_0.5": accuracy, "cases": len(test_y), "calibration": calibration,
               "provenance": collect(predictor, data=Path(args.shared) / "pneumoniamnist_balanced" /
                                     "pneumoniamnist_balanced_trainval.npz", settings=args)}
    out.write_text(json.dumps(summary, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, score in scores.items():
            if name == "trivial_constant":
                continue
            fpr, tpr, _ = roc_curve(test_y, score)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {aurocs[name]:.3f})")
        ax.plot([0, 1], [0, 1], "k:", label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("Normal vs pneumonia, PneumoniaMNIST val")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        pass
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
