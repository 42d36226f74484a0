"""Self-contained HTML report of a benchmark run: metrics with intervals beside baselines, curves, per-case
table, and the best and worst segmentation cases as overlays (pictures embedded as base64 PNGs)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _array_png(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _curves(report: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from medfoundry.tasks.calibration import reliability_diagram

    cases = report["per_case"]
    probs = np.array([c["probs"] for c in cases])
    y = np.array([report["labels"].index(c["label"]) for c in cases])
    pictures = []
    if probs.shape[1] == 2 and len(set(y)) == 2:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        fpr, tpr, _ = roc_curve(y, probs[:, 1])
        axes[0].plot(fpr, tpr)
        axes[0].plot([0, 1], [0, 1], "k:")
        axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        prec, rec, _ = precision_recall_curve(y, probs[:, 1])
        axes[1].plot(rec, prec)
        axes[1].set(xlabel="recall", ylabel="precision", title="precision-recall")
        fig.tight_layout()
        pictures.append(_png(fig))
    buf = io.BytesIO()
    reliability_diagram(probs, y, buf, "reliability")
    pictures.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return pictures


def _overlays(report: dict[str, Any], k: int = 3) -> list[tuple[str, str]]:
    from medfoundry.io import read_image
    from medfoundry.viz import display_rgb, draw_box, overlay_mask, thumbnail

    cases = sorted(report["per_case"], key=lambda c: c["model"]["dice"])
    chosen = [("worst", c) for c in cases[:k]] + [("best", c) for c in cases[-k:]]
    out = []
    for tag, case in chosen:
        image = read_image(case["image"])
        truth = read_image(case["mask"]).array > 0
        truth = truth[..., 0] if truth.ndim == 3 else truth
        rgb = overlay_mask(draw_box(display_rgb(image), np.array(case["box"])), truth, color=(80, 255, 80), alpha=0.25)
        out.append((f"{tag}: {case['id']} (Dice {case['model']['dice']:.3f})", _array_png(thumbnail(rgb, 280))))
    return out


def write_report(report: dict[str, Any], path: Path) -> None:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{m['value']:.4f}</td><td>[{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]</td>"
        f"<td>{'' if report['baseline'].get(name) is None else format(report['baseline'][name], '.4f')}</td></tr>"
        for name, m in report["metrics"].items())
    pictures = ""
    if report["task"] == "zero-shot-classification":
        pictures = "".join(f"<img src='{src}'>" for src in _curves(report))
    else:
        pictures = "".join(f"<figure><img src='{src}'><figcaption>{esc(cap)}</figcaption></figure>"
                           for cap, src in _overlays(report))
    sub = "".join(f"<p>{esc(col)} ({esc(s['metric'])}): {esc(str(s['values']))}; largest gap "
                  f"{s['largest_gap']}</p>" for col, s in report["subgroups"].items())
    cfg = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in report["config"].items())
    cases = report["per_case"][:500]
    if report["task"] == "zero-shot-classification":
        case_rows = "".join(f"<tr><td>{esc(str(c['id']))}</td><td>{esc(c['label'])}</td>"
                            f"<td>{esc(str(c['probs']))}</td></tr>" for c in cases)
    else:
        case_rows = "".join(f"<tr><td>{esc(str(c['id']))}</td><td>{c['model']['dice']:.3f}</td>"
                            f"<td>{c['baseline']['dice']:.3f}</td><td>{c['model']['hd95']:.2f}</td></tr>"
                            for c in cases)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>" + esc(report["benchmark"]) + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:.85em}"
        "td,th{border:1px solid #ddd;padding:2px 6px}figure{display:inline-block;margin:.5em}</style></head><body>"
        f"<h1>{esc(report['benchmark'])}</h1><p>{esc(report['description'])}</p>"
        "<h2>Metrics (95 % bootstrap interval) and no-model baseline</h2>"
        f"<table><tr><th>metric</th><th>value</th><th>95 % CI</th><th>baseline</th></tr>{rows}</table>"
        f"{sub}<h2>Pictures</h2>{pictures}<h2>Configuration</h2><table>{cfg}</table>"
        f"<h2>Cases</h2><table>{case_rows}</table></body></html>", encoding="utf-8")
