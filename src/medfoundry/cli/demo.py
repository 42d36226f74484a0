"""``medfoundry demo``: the main job on real sample images, written to an HTML page.

Today it reads every sample (DICOM, NIfTI, raster, npz), writes a windowed preview of each and lists the
registered models by the survey's taxonomy; later capabilities add their results to the same page.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

from medfoundry.errors import MedfoundryError
from medfoundry.files import check_writable
from medfoundry.io import read_image, write_image
from medfoundry.registry import list_models
from medfoundry.samples import all_samples


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the bundled sample images and write an HTML page")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo page in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_writable(out / "index.html", args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in all_samples():
        try:
            image = read_image(sample.path)
        except MedfoundryError as exc:
            rows.append({"name": sample.name, "error": str(exc)})
            continue
        preview = out / f"{sample.name}.png"
        middle = image.array.shape[0] // 2 if image.is_volume else None
        write_image(image, preview, slice_index=middle, overwrite=True)
        summary = image.summary()
        rows.append({"name": sample.name, "description": sample.description, "origin": sample.origin,
                     "preview": preview.name, "summary": summary})
        print(f"{sample.name:14s} {summary['modality']:3s} {'×'.join(map(str, summary['shape'])):16s} "
              f"spacing {summary['spacing_mm']} mm  {summary['orientation']}  {summary['units']}")
    models = [r.to_dict() for r in list_models()]
    (out / "demo.json").write_text(json.dumps({"samples": rows, "models": models}, indent=2, default=str))
    (out / "index.html").write_text(_page(rows, models), encoding="utf-8")
    print(f"{len(models)} registered models; wrote {out / 'index.html'}")
    return 0


def _page(rows: list[dict], models: list[dict]) -> str:
    esc = html.escape
    cards = []
    for row in rows:
        if "error" in row:
            cards.append(f"<div class='card'><h3>{esc(row['name'])}</h3><p class='err'>{esc(row['error'])}</p></div>")
            continue
        s = row["summary"]
        cards.append(
            f"<div class='card'><h3>{esc(row['name'])}</h3><img src='{esc(row['preview'])}'>"
            f"<p>{esc(row['description'])}<br><small>{esc(row['origin'])}</small></p>"
            f"<table><tr><td>shape</td><td>{esc(str(s['shape']))}</td></tr>"
            f"<tr><td>spacing (mm)</td><td>{esc(str(s['spacing_mm']))}</td></tr>"
            f"<tr><td>orientation</td><td>{esc(s['orientation'])}</td></tr>"
            f"<tr><td>modality / units</td><td>{esc(s['modality'])} / {esc(s['units'])}</td></tr>"
            f"<tr><td>window</td><td>{s['window']['center']:.0f} / {s['window']['width']:.0f}</td></tr></table></div>"
        )
    model_rows = "".join(
        f"<tr><td>{esc(m['name'])}</td><td>{esc(m['family'])}</td><td>{esc(', '.join(m['tasks']))}</td>"
        f"<td>{esc(m['license'])}</td><td>{'yes' if m['commercial_use'] else 'no'}</td></tr>" for m in models
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medfoundry demo</title>
<style>body{{font-family:sans-serif;margin:2em}}.grid{{display:flex;flex-wrap:wrap;gap:1em}}
.card{{border:1px solid #ccc;padding:.8em;width:280px}}.card img{{width:256px;height:256px;object-fit:contain;
background:#000}}table{{border-collapse:collapse;font-size:.85em}}td,th{{border:1px solid #ddd;padding:2px 6px}}
.err{{color:#b00}}</style></head><body><h1>medfoundry demo</h1><h2>Sample images</h2>
<div class="grid">{''.join(cards)}</div><h2>Registered models</h2>
<table><tr><th>name</th><th>family</th><th>tasks</th><th>license</th><th>commercial</th></tr>{model_rows}</table>
</body></html>"""
