"""``medfoundry info PATH``: what an image is (shape, spacing, orientation, modality, values, window)."""

from __future__ import annotations

import argparse
import json

from medfoundry.io import read_image


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a medical image (DICOM file/folder, NIfTI, PNG/JPEG/TIFF, npy/npz)")
    p.add_argument("path", help="image file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--show-phi", action="store_true", help="also print identifying tags (patient name, ids, dates)")
    p.add_argument("--series", default=None, help="SeriesInstanceUID, for a folder holding several series")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    image = read_image(args.path, series_uid=args.series)
    summary = image.summary(show_phi=args.show_phi)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(args.path), show_header=False)
    for key in ("shape", "dtype", "spacing_mm", "origin_mm", "orientation", "modality", "photometric", "units",
                "value_range", "window"):
        table.add_row(key, _fmt(summary[key]))
    for key, value in summary["meta"].items():
        table.add_row(f"meta.{key}", _fmt(value))
    for key, value in summary.get("phi", {}).items():
        table.add_row(f"phi.{key}", _fmt(value))
    Console().print(table)
    return 0


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return " × ".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(list(value))
    return str(value)
