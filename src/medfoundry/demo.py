"""The main job on real sample images with the embedded default models, written to one HTML page.

Sections: the images read (any format), zero-shot labels and a grounding heatmap (medfoundry-clip-tiny),
prompted masks with measurements in 2D (medfoundry-sam-lite) and 3D (medfoundry-box3d-tiny from one box), a
similar-case search over a small
gallery, and reports (a draft from those measurements; for chest X-rays a retrieved clinical note when the
shared data is present). Every picture is a PNG beside ``index.html``; every number is also in ``demo.json``.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medfoundry.errors import MedfoundryError
from medfoundry.io import MedImage, read_image
from medfoundry.samples import Sample, all_samples, shared_data_dir
from medfoundry.viz import display_rgb, draw_box, overlay_heatmap, overlay_mask, thumbnail

#: the model record's label sets shown per image: modality for all, plane and body region for CT / MR slices
MODALITY_SET, CROSS_SECTION_SETS = "modality", ("plane", "region")


def _save(rgb: np.ndarray, path: Path) -> str:
    Image.fromarray(thumbnail(rgb, 320)).save(path)
    return path.name


def _plane(image: MedImage) -> MedImage:
    """The image (a volume's middle slice) as radiologists display it (anterior up, patient's left on the right)."""
    return (image.slice(image.array.shape[0] // 2) if image.is_volume else image).radiological()


def _kvasir_box(root: Path, image_path: Path) -> np.ndarray | None:
    with open(root / "kvasir_seg" / "metadata.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if Path(row["image"]).name == image_path.name:
                boxes = json.loads(row["bboxes_xyxy"])
                return np.array(boxes[0], dtype=np.float32) if boxes else None
    return None


def run_demo(out: Path, log=print) -> dict[str, Any]:
    """Run every section into ``out`` (created); returns what ``demo.json`` holds."""
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.predict.default_segmenter import open_default_segmenter
    from medfoundry.registry import list_models
    from medfoundry.tasks.segmentation import segment
    from medfoundry.tasks.zero_shot import label_set, zero_shot_classify

    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"samples": [], "zero_shot": [], "segmentation": [], "search": []}
    images: dict[str, tuple[Sample, MedImage]] = {}
    for sample in all_samples():
        try:
            image = read_image(sample.path)
        except MedfoundryError as exc:
            report["samples"].append({"name": sample.name, "error": str(exc)})
            continue
        images[sample.name] = (sample, image)
        s = image.summary()
        report["samples"].append({"name": sample.name, "description": sample.description, "origin": sample.origin,
                                  "preview": _save(display_rgb(_plane(image)), out / f"{sample.name}.png"),
                                  "summary": s})
        log(f"read   {sample.name:14s} {s['modality']:3s} {'×'.join(map(str, s['shape'])):14s} {s['orientation']}")

    clip = open_contrastive("medfoundry-clip-tiny")
    names = list(images)
    planes = [_plane(images[n][1]) for n in names]
    modality = label_set(clip, MODALITY_SET)
    kinds = zero_shot_classify(clip, planes, list(modality), prompts=modality)
    for i, name in enumerate(names):
        entry: dict[str, Any] = {"name": name, "kind": {k: round(float(v), 3) for k, v in
                                                        zip(kinds.labels, kinds.probs[i], strict=True)}}
        image = images[name][1]
        if kinds.top(i)[0] in ("CT", "MR"):
            for set_name in CROSS_SECTION_SETS:
                prompts = label_set(clip, set_name)
                scores = zero_shot_classify(clip, [planes[i]], list(prompts), prompts=prompts)
                entry[set_name] = {k: round(float(v), 3) for k, v in zip(scores.labels, scores.probs[0], strict=True)}
        if kinds.top(i)[0] == "radiograph" and not image.is_volume and image.modality in ("CR", "DX", "OT", ""):
            # a header that says CT or MR (or a volume) overrules the zero-shot image type
            cxr = zero_shot_classify(clip, [planes[i]], ["normal", "pneumonia"])
            entry["finding"] = {k: round(float(v), 3) for k, v in zip(cxr.labels, cxr.probs[0], strict=True)}
            heat = clip.dense_similarity(planes[i], "pneumonia")
            entry["heatmap"] = _save(overlay_heatmap(display_rgb(planes[i]), heat), out / f"{name}_heat.png")
        report["zero_shot"].append(entry)
        extra = {k: max(entry[k], key=entry[k].get) for k in (*CROSS_SECTION_SETS, "finding") if k in entry}
        log(f"label  {name:14s} {kinds.top(i)[0]} ({kinds.top(i)[1]:.2f}) {extra or ''}")

    seg = open_default_segmenter()  # medfoundry-sam-lite in 2D, medfoundry-box3d-tiny for a box in 3D
    root = shared_data_dir()
    jobs: list[tuple[str, MedImage, np.ndarray, int | None]] = []
    if "polyp" in images and root is not None:
        box = _kvasir_box(root, images["polyp"][0].path)
        if box is not None:
            jobs.append(("polyp", images["polyp"][1], box, None))
    if "ct-lesion" in images:
        truth = read_image(images["ct-lesion"][0].path, key="gts").array > 0
        key = int(truth.sum(axis=(1, 2)).argmax())
        from medfoundry.predict.boxes import mask_box

        jobs.append(("ct-lesion", images["ct-lesion"][1], mask_box(truth[key]), key))
    if not jobs and "ct-small" in images:  # no shared data: a box around the centre of the CT slice
        jobs.append(("ct-small", images["ct-small"][1], np.array([40.0, 40.0, 88.0, 88.0]), None))
    for name, image, box, key in jobs:
        outcome = segment(seg, image, box[None], slice_index=key, propagate=key is not None)
        shown = outcome.plane
        shown_mask = outcome.mask if key is None else outcome.mask[key]
        m = outcome.measurement
        picture = overlay_mask(draw_box(display_rgb(shown), box), shown_mask)
        report["segmentation"].append({"name": name, "model": outcome.model, "box_xyxy": box.round(1).tolist(),
                                       "key_slice": key,
                                       "overlay": _save(picture, out / f"{name}_mask.png"), **m.to_dict()})
        size = f"{m.volume_ml:.2f} mL" if m.volume_ml is not None else f"{m.area_mm2:.0f} mm²"
        size = size if m.spacing_known else f"{m.pixels} px (no pixel spacing in the file)"
        unit = "mm" if m.spacing_known else "px"
        log(f"mask   {name:14s} {size}, long axis {m.long_axis_mm:.1f} {unit}, short axis {m.short_axis_mm:.1f} {unit}")

    embeddings = clip.embed_images(planes)
    sims = embeddings @ embeddings.T
    for i, name in enumerate(names):
        order = [j for j in np.argsort(-sims[i]) if j != i][:3]
        report["search"].append({"query": name, "neighbours": [{"name": names[j], "cosine": round(float(sims[i, j]),
                                                                                                  3)} for j in order]})
    report["reports"] = _reports(report, clip, dict(zip(names, planes, strict=True)), root, log)
    report["models"] = [r.to_dict() for r in list_models()]
    (out / "demo.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "index.html").write_text(render(report), encoding="utf-8")
    log(f"wrote {out / 'index.html'} (also at /demo/ of `medfoundry serve --demo {out}`)")
    return report


def _draft(zero_shot: dict[str, Any], seg: dict[str, Any] | None, modality: str) -> str:
    """A findings draft assembled only from this page's measured outputs, each sentence naming its source."""
    kind, p = max(zero_shot["kind"].items(), key=lambda kv: kv[1])
    lines = [f"Modality in the file: {modality}."] if modality not in ("", "OT") else []
    lines.append(f"Image type: {kind} (zero-shot {p:.2f}).")
    for set_name in CROSS_SECTION_SETS:
        if set_name in zero_shot:
            label, q = max(zero_shot[set_name].items(), key=lambda kv: kv[1])
            lines.append(f"Zero-shot {set_name}: {label.replace('_', ' ')} ({q:.2f}).")
    if "finding" in zero_shot:
        label, q = max(zero_shot["finding"].items(), key=lambda kv: kv[1])
        lines.append(f"Zero-shot finding: {label} ({q:.2f}; medfoundry-clip-tiny, not a diagnosis).")
    if seg is not None:
        unit = "mm" if seg["spacing_known"] else "px"
        if seg["volume_ml"] is not None:
            size = f"volume {seg['volume_ml']:.2f} mL"
        else:
            size = f"area {seg['area_mm2']:.0f} mm²" if seg["spacing_known"] else f"area {seg['pixels']} px"
        lines.append(f"Prompted lesion: {size}, long axis {seg['long_axis_mm']:.1f} {unit}, short axis "
                     f"{seg['short_axis_mm']:.1f} {unit} ({seg['model']}).")
    return " ".join(lines)


def _reports(report: dict[str, Any], clip: Any, planes: dict[str, MedImage], root: Path | None, log
             ) -> list[dict[str, Any]]:
    """Per image: the measured-findings draft and, for chest X-rays when the shared data is present, the clinical
    note retrieved from the notes of the COVID-19 collection's training patients (`medfoundry report`)."""
    bank = None
    if root is not None and (root / "covid_cxr_clinical_notes").is_dir():
        import random

        from medfoundry.datasets.pairs import covid_note_rows
        from medfoundry.tasks.report import build_report_bank

        notes = [r["text"] for r in covid_note_rows(root, random.Random(0)) if r["split"] == "train"]
        bank = build_report_bank(clip, notes)
    segs = {s["name"]: s for s in report["segmentation"]}
    summaries = {s["name"]: s["summary"] for s in report["samples"] if "summary" in s}
    out = []
    for z in report["zero_shot"]:
        modality = summaries[z["name"]]["modality"]
        entry = {"name": z["name"], "draft": _draft(z, segs.get(z["name"]), modality)}
        if bank is not None and "finding" in z:  # 2D radiographs only: the bank holds chest X-ray notes
            from medfoundry.tasks.report import generate_report

            retrieved = generate_report(clip, planes[z["name"]], bank)
            entry["retrieved"] = retrieved.text
            entry["similarity"] = round(retrieved.sources[0].score, 3)
            entry["bank"] = f"{len(bank)} clinical notes of the training patients (covid_cxr_clinical_notes)"
        out.append(entry)
        log(f"report {z['name']:14s} {entry['draft'][:70]}{' + retrieved note' if 'retrieved' in entry else ''}")
    return out


def render(report: dict[str, Any]) -> str:
    """The self-contained HTML page (images referenced beside it)."""
    esc = html.escape
    parts = ["<h2>Images read</h2><div class='grid'>"]
    for row in report["samples"]:
        if "error" in row:
            parts.append(f"<div class='card'><h3>{esc(row['name'])}</h3><p class='err'>{esc(row['error'])}</p></div>")
            continue
        s = row["summary"]
        parts.append(f"<div class='card'><h3>{esc(row['name'])}</h3><img src='{row['preview']}'>"
                     f"<p>{esc(row['description'])}<br><small>{esc(row['origin'])}</small></p><small>"
                     f"{esc(' × '.join(map(str, s['shape'])))} · {esc(str(s['spacing_mm']))} mm · "
                     f"{esc(s['orientation'])} · {esc(s['modality'])} {esc(s['units'])}</small></div>")
    parts.append("</div><h2>Zero-shot labels (medfoundry-clip-tiny)</h2><div class='grid'>")
    for z in report["zero_shot"]:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{v:.3f}</td></tr>" for k, v in z["kind"].items())
        extra = "".join(f"<tr><td><b>{esc(k)}</b></td><td><b>{v:.3f}</b></td></tr>"
                        for k, v in z.get("finding", {}).items())
        for set_name in CROSS_SECTION_SETS:
            if set_name in z:
                best = max(z[set_name], key=z[set_name].get)
                extra += (f"<tr><td><i>{esc(set_name)}: {esc(best.replace('_', ' '))}</i></td>"
                          f"<td><i>{z[set_name][best]:.3f}</i></td></tr>")
        heat = f"<img src='{z['heatmap']}'><br><small>similarity to “pneumonia”</small>" if "heatmap" in z else ""
        parts.append(f"<div class='card'><h3>{esc(z['name'])}</h3>{heat}<table>{rows}{extra}</table></div>")
    parts.append("</div><h2>Prompted masks and measurements</h2><div class='grid'>")
    for s in report["segmentation"]:
        unit = "mm" if s["spacing_known"] else "px"
        if s["volume_ml"] is not None:
            size = f"{s['volume_ml']:.2f} mL (3D, from the box on slice {s['key_slice']})"
        else:
            size = f"{s['area_mm2']:.0f} mm²" if s["spacing_known"] else f"{s['pixels']} px (file has no spacing)"
        stats = f"<br>mean {s['mean']:.1f} ± {s['std']:.1f} {esc(s['units'])}" if s["mean"] is not None else ""
        parts.append(f"<div class='card'><h3>{esc(s['name'])}</h3><img src='{s['overlay']}'><p>"
                     f"{esc(s['model'])}<br>box "
                     f"{esc(str(s['box_xyxy']))}<br>{esc(size)}<br>long axis {s['long_axis_mm']:.1f} {unit}, "
                     f"short axis {s['short_axis_mm']:.1f} {unit}{stats}</p></div>")
    parts.append("</div><h2>Similar-case search</h2><table><tr><th>query</th><th>nearest (cosine)</th></tr>")
    for q in report["search"]:
        nn = ", ".join(f"{esc(n['name'])} ({n['cosine']:.2f})" for n in q["neighbours"])
        parts.append(f"<tr><td>{esc(q['query'])}</td><td>{nn}</td></tr>")
    parts.append("</table><h2>Reports</h2><p><small>Drafts assembled from the measurements above; for chest "
                 "X-rays, the nearest clinical note of a report bank (retrieval, when the shared data is present or "
                 "with <code>medfoundry report --bank</code>). Research output, not for diagnosis.</small></p>"
                 "<table><tr><th>image</th><th>draft from measurements</th><th>retrieved report</th></tr>")
    for r in report.get("reports", []):
        retrieved = (f"{esc(r['retrieved'])}<br><small>similarity {r['similarity']:.3f}; bank: {esc(r['bank'])}"
                     "</small>" if "retrieved" in r else "")
        parts.append(f"<tr><td>{esc(r['name'])}</td><td>{esc(r['draft'])}</td><td>{retrieved}</td></tr>")
    parts.append("</table><h2>Registered models</h2><table><tr><th>name</th><th>family</th><th>tasks</th>"
                 "<th>license</th><th>commercial</th></tr>")
    for m in report["models"]:
        parts.append(f"<tr><td>{esc(m['name'])}</td><td>{esc(m['family'])}</td><td>{esc(', '.join(m['tasks']))}</td>"
                     f"<td>{esc(m['license'])}</td><td>{'yes' if m['commercial_use'] else 'no'}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>medfoundry demo</title><style>"
            "body{font-family:sans-serif;margin:2em}.grid{display:flex;flex-wrap:wrap;gap:1em}"
            ".card{border:1px solid #ccc;padding:.8em;width:330px}.card img{max-width:320px;background:#000}"
            "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px}"
            ".err{color:#b00}</style></head><body><h1>medfoundry demo</h1>" + "".join(parts) + "</table></body></html>")
