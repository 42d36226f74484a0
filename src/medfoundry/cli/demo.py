"""``medfoundry demo``: the main job on real sample images with the embedded models, as an HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from medfoundry.files import check_writable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the bundled sample images and write an HTML page")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo page in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medfoundry.demo import run_demo

    out = Path(args.out)
    check_writable(out / "index.html", args.overwrite)
    run_demo(out)
    return 0
