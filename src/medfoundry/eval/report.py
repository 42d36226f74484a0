"""Self-contained HTML report of a benchmark run: metrics with intervals beside baselines, curves, per-case
table, and the best and worst segmentation cases as overlays (pictures embedded as base64 PNGs)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import replace
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


def _metric_bars(report: dict[str, Any]) -> str:
    """Model (with 95 % interval) beside the no-model baseline, one bar pair per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, m in report["metrics"].items() if np.isfinite(m["value"]) and n != "hd95"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.2))
    x = np.arange(len(names))
    vals = [report["metrics"][n]["value"] for n in names]
    err = np.array([[v - report["metrics"][n]["ci95"][0], report["metrics"][n]["ci95"][1] - v]
                    for n, v in zip(names, vals, strict=True)]).T
    ax.bar(x - 0.2, vals, 0.4, yerr=np.nan_to_num(err), capsize=3, label=report["config"]["model"])
    base = [report["baseline"].get(n) for n in names]
    ax.bar(x + 0.2, [b if b is not None else 0 for b in base], 0.4, color="#bbb",
           label=report.get("baseline_name") or "baseline")
    ax.set_xticks(x, names)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _zoom(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The region around a small box (the box plus its own size on every side, at least 64 px), else all."""
    h, w = rgb.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    if max(bw / w, bh / h) > 0.25:
        return rgb
    pad = max(bw, bh, 64)
    x0, y0 = int(max(box[0] - pad, 0)), int(max(box[1] - pad, 0))
    x1, y1 = int(min(box[2] + pad, w)), int(min(box[3] + pad, h))
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def _overlays(report: dict[str, Any], folder: Path, k: int = 3) -> list[tuple[str, str]]:
    """Best and worst segmentation cases: prediction (red), truth (green), prompt box; 3D cases at the key slice."""
    from medfoundry.eval.tasks.segmentation import load_prediction, truth_mask
    from medfoundry.io import read_image
    from medfoundry.viz import display_rgb, draw_box, overlay_mask, thumbnail

    cases = sorted(report["per_case"], key=lambda c: c["model"]["dice"])
    chosen = [("worst", c) for c in cases[:k]] + [("best", c) for c in cases[-k:]]
    keys = report.get("dataset_keys", {})
    out = []
    for tag, case in chosen:
        image = read_image(case["image"], key=keys.get("image"))
        truth = truth_mask(case, image, keys.get("mask"))
        pred_path = folder / "predictions" / case.get("prediction", "")
        pred = load_prediction(pred_path) if case.get("prediction") and pred_path.is_file() else None
        side = None
        if "key_slice" in case:
            z = case["key_slice"]
            side = _side_view(image, truth, pred, np.array(case["box"]), z)
            image, truth, pred = image.slice(z), truth[z], None if pred is None else pred[z]
        rgb = display_rgb(image)
        if pred is not None:
            rgb = overlay_mask(rgb, pred, color=(255, 60, 60), alpha=0.35)
        box = np.array(case["box"])
        rgb = draw_box(overlay_mask(rgb, truth, color=(80, 255, 80), alpha=0.2), box)
        out.append((f"{tag}: {case['id']} (Dice {case['model']['dice']:.3f})",
                    _array_png(thumbnail(_zoom(rgb, box), 280))))
        if side is not None:
            out.append((f"{tag}: {case['id']} along z (through the box centre; key slice marked)",
                        _array_png(thumbnail(side, 280))))
    return out


def _side_view(volume: Any, truth: np.ndarray, pred: np.ndarray | None, box: np.ndarray, key: int) -> np.ndarray:
    """(H, W, 3) uint8: the volume cut along z through the prompt box's centre column (rows: slices, stretched to
    millimetres), around the box's rows; prediction red, truth green, the key slice as a yellow line."""
    from PIL import Image

    from medfoundry.viz import display_rgb, overlay_mask

    x = int(np.clip((box[0] + box[2]) / 2, 0, truth.shape[2] - 1))
    pad = int(max(box[3] - box[1], 16))
    y0, y1 = int(max(box[1] - pad, 0)), int(min(box[3] + pad, truth.shape[1]))
    cut = replace(volume, array=volume.array[:, y0:y1, x], spacing=(volume.spacing[0], volume.spacing[1]),
                  direction=None)
    rgb = display_rgb(cut)
    if pred is not None:
        rgb = overlay_mask(rgb, pred[:, y0:y1, x], color=(255, 60, 60), alpha=0.35)
    rgb = overlay_mask(rgb, truth[:, y0:y1, x], color=(80, 255, 80), alpha=0.2)
    rgb[key, :, :] = (255, 220, 0)
    rows = max(round(rgb.shape[0] * volume.spacing[0] / volume.spacing[1]), 1)
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1], rows), Image.NEAREST))


def _retrieval_examples(report: dict[str, Any], k: int = 3) -> str:
    """A few queries with their top-5 results (relevant ones framed green, others red)."""
    from medfoundry.io import read_image
    from medfoundry.viz import display_rgb, thumbnail

    esc = html.escape
    cases = report["per_case"]
    mode = report.get("mode", "image-to-image")
    rows = []
    for case in cases[:: max(1, len(cases) // k)][:k]:
        cells = []
        if mode == "text-to-image":
            cells.append(f"<td style='max-width:18em'>{esc(case.get('text', '(text omitted)')[:200])}</td>")
        else:
            cells.append(f"<td><img src='{_array_png(thumbnail(display_rgb(read_image(case['image'])), 96))}'>"
                         f"<br>{esc(str(case.get('label', case['id'])))}</td>")
        for j, ok in zip(case["top5"], case["top5_relevant"], strict=True):
            hit = cases[j]
            colour = "#2a2" if ok else "#c22"
            if mode == "image-to-text":
                body = esc(hit.get("text", "")[:120])
            else:
                body = f"<img src='{_array_png(thumbnail(display_rgb(read_image(hit['image'])), 96))}'>"
            cells.append(f"<td style='border:3px solid {colour};max-width:12em'>{body}<br>"
                         f"{esc(str(hit.get('label', hit['id'])))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<h3>Example queries (query, then top 5)</h3><table>" + "".join(rows) + "</table>"


def _report_examples(report: dict[str, Any], k: int = 4) -> str:
    """A few test images with the report retrieved for them and the one written for them."""
    from medfoundry.io import read_image
    from medfoundry.viz import display_rgb, thumbnail

    esc = html.escape
    cases = report["per_case"]
    rows = [f"<tr><td><img src='{_array_png(thumbnail(display_rgb(read_image(c['image'])), 128))}'><br>"
            f"{esc(str(c['id']))}</td><td style='max-width:28em'>{esc(c.get('generated', '(text omitted)'))}<br>"
            f"<small>similarity {c['similarity']:.3f}</small></td><td style='max-width:28em'>"
            f"{esc(c.get('reference', '(text omitted)'))}</td></tr>" for c in cases[:: max(1, len(cases) // k)][:k]]
    return ("<h3>Examples</h3><table><tr><th>image</th><th>retrieved report</th><th>written report</th></tr>"
            + "".join(rows) + "</table>")


def _mask_of_truth(section: dict[str, Any]) -> str:
    def fmt(m):
        return f"{m['value']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]"

    return (f"<h2>Mask of truth</h2><p>{html.escape(section['description'])}.</p><table>"
            f"<tr><td>shift, truth hidden</td><td>{fmt(section['shift_truth_hidden'])}</td></tr>"
            f"<tr><td>shift, control hidden</td><td>{fmt(section['shift_control_hidden'])}</td></tr>"
            f"<tr><td>difference</td><td>{fmt(section['shift_difference'])}</td></tr>"
            f"<tr><td>flip rate truth / control</td><td>{section['flip_rate_truth_hidden']:.3f} / "
            f"{section['flip_rate_control_hidden']:.3f}</td></tr>"
            f"<tr><td>mean hidden area fraction</td><td>{section['mean_region_fraction']:.3f}</td></tr></table>")


def _answer_table(report: dict[str, Any]) -> str:
    """Expected answer × parsed answer counts (a confusion table; "none" = the answer started otherwise)."""
    esc = html.escape
    cases = report["per_case"]
    expected = sorted({c["expected"] for c in cases})
    parsed = expected + (["none"] if any(c["parsed"] is None for c in cases) else [])
    count = {(e, a): sum(1 for c in cases if c["expected"] == e and (c["parsed"] or "none") == a)
             for e in expected for a in parsed}
    return ("<table><tr><th>expected \\ answered</th>" + "".join(f"<th>{esc(a)}</th>" for a in parsed) + "</tr>"
            + "".join(f"<tr><th>{esc(e)}</th>" + "".join(f"<td>{count[e, a]}</td>" for a in parsed) + "</tr>"
                      for e in expected) + "</table>")


def _case_rows(report: dict[str, Any]) -> str:
    esc = html.escape
    cases = report["per_case"][:500]
    if report["task"] == "report-generation":
        return "<tr><th>case</th><th>similarity</th><th>retrieved</th><th>written</th></tr>" + "".join(
            f"<tr><td>{esc(str(c['id']))}</td><td>{c['similarity']:.3f}</td>"
            f"<td>{esc(c.get('generated', '(omitted)')[:300])}</td><td>{esc(c.get('reference', '(omitted)')[:300])}"
            "</td></tr>" for c in cases)
    if report["task"] == "vqa-closed":
        return "<tr><th>case</th><th>label</th><th>expected</th><th>parsed</th><th>answer</th></tr>" + "".join(
            f"<tr><td>{esc(str(c['id']))}</td><td>{esc(c['label'])}</td><td>{esc(c['expected'])}</td>"
            f"<td>{esc(str(c['parsed']))}</td><td>{esc(c['answer'][:300])}</td></tr>" for c in cases)
    if "probs" in cases[0]:
        return "".join(f"<tr><td>{esc(str(c['id']))}</td><td>{esc(c['label'])}</td>"
                       f"<td>{esc(str(c['probs']))}</td></tr>" for c in cases)
    names = list(report["metrics"])
    head = "<tr><th>case</th>" + "".join(f"<th>{esc(n)}</th><th>baseline</th>" for n in names) + "</tr>"
    return head + "".join(
        f"<tr><td>{esc(str(c['id']))}</td>" + "".join(f"<td>{c['model'][n]:.3f}</td><td>{c['baseline'][n]:.3f}</td>"
                                                      for n in names) + "</tr>" for c in cases)


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the self-contained HTML page of ``report`` (the results dict) to ``path``."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{m['value']:.4f}</td><td>[{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]</td>"
        f"<td>{'' if report['baseline'].get(name) is None else format(report['baseline'][name], '.4f')}</td></tr>"
        for name, m in report["metrics"].items())
    pictures = f"<img src='{_metric_bars(report)}'>"
    if "probs" in report["per_case"][0]:
        pictures += "".join(f"<img src='{src}'>" for src in _curves(report))
    elif report["task"] == "retrieval":
        pictures += _retrieval_examples(report)
    elif report["task"] == "report-generation":
        pictures += _report_examples(report)
    elif report["task"] == "vqa-closed":
        pictures += _answer_table(report)
    else:
        pictures += "".join(f"<figure><img src='{src}'><figcaption>{esc(cap)}</figcaption></figure>"
                            for cap, src in _overlays(report, path.parent))
    sub = "".join(f"<p>{esc(col)} ({esc(s['metric'])}): " + ", ".join(
        f"{esc(str(v))}: {'n/a' if x['value'] is None else format(x['value'], '.4f')} (n={x['cases']})"
        for v, x in s["values"].items()) + f"; largest gap {s['largest_gap']}</p>"
        for col, s in report["subgroups"].items())
    robustness = _mask_of_truth(report["mask_of_truth"]) if "mask_of_truth" in report else ""
    cfg = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in report["config"].items())
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>" + esc(report["benchmark"]) + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:.85em}"
        "td,th{border:1px solid #ddd;padding:2px 6px}figure{display:inline-block;margin:.5em}</style></head><body>"
        f"<h1>{esc(report['benchmark'])}</h1><p>{esc(report['description'])}</p>"
        f"<h2>Metrics (95 % bootstrap interval) and no-model baseline: {esc(report.get('baseline_name', ''))}</h2>"
        f"<table><tr><th>metric</th><th>value</th><th>95 % CI</th><th>baseline</th></tr>{rows}</table>"
        f"{sub}{robustness}<h2>Pictures</h2>{pictures}<h2>Configuration</h2><table>{cfg}</table>"
        f"<h2>Cases</h2><table>{_case_rows(report)}</table></body></html>", encoding="utf-8")
