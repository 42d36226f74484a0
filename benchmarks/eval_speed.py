"""Wall time of the evaluation harness on 100 box-prompted 2D segmentation cases (Kvasir-SEG val) with the
embedded segmenter, from a cold start (model loading, every prediction, metrics, bootstrap, HTML report).

    medfoundry eval prepare --shared ../shared/data --out eval-data
    python benchmarks/eval_speed.py --data eval-data --out benchmarks/results/eval_speed.json
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from medfoundry.eval.runner import run_benchmark
from medfoundry.eval.specs import load_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="eval-data", help="folder written by `medfoundry eval prepare`")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/eval_speed.json")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    with open(data / "kvasir.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "cases.csv"
        with open(table, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**r, "image": str(data / r["image"]), "mask": str(data / r["mask"])} for r in rows)
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(f"name: kvasir-box-{len(rows)}\ntask: segmentation-2d\ndataset:\n  csv: {table}\n"
                             "metrics: [dice, iou, hd95, nsd]\nbootstrap: 1000\n")
        start = time.perf_counter()
        report = run_benchmark(load_spec(spec_path), "medfoundry-sam-lite", Path(tmp) / "run", progress=False)
        seconds = time.perf_counter() - start
    summary = {"benchmark": f"harness wall time, {len(rows)} Kvasir-SEG box-prompted cases, medfoundry-sam-lite",
               "cases": len(rows), "seconds": seconds, "seconds_per_case": seconds / len(rows),
               "dice": report["metrics"]["dice"]["value"], "target_seconds": 120,
               "provenance": report["provenance"] | {"script_arguments": vars(args)}}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
