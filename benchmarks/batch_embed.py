"""Batch embedding throughput: `medfoundry batch embed` on Ray with 1 and 2 workers against the plain
`medfoundry embed` loop, over the same images, each as a whole command (start-up and model loading included).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/batch_embed.py --shared ../shared/data --images 300

The images are the first ``--images`` MedPix JPEGs of the shared data (sorted by name). Every configuration
runs in a fresh process; the batch outputs are checked against the plain loop's embeddings (max |difference|).
Writes benchmarks/results/batch_embed.json with wall seconds, images per second, the machine's CPU model and load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import medfoundry
from medfoundry.eval.provenance import collect

#: the weights file the `medfoundry` commands this script runs load (the embedded model of this install)
EMBEDDED_CLIP = Path(medfoundry.__file__).parent / "weights" / "medfoundry-clip-tiny" / "model.safetensors"


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def timed(cmd: list[str]) -> tuple[float, str]:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}  # every configuration may use every CPU
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} … failed:\n{done.stderr[-3000:]}")
    return wall, f"{load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/batch_embed.json")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    images = sorted((Path(args.shared) / "medpix_ct_mr_captions" / "images").glob("*.jpg"))[: args.images]
    if not images:
        raise SystemExit(f"no MedPix images under {args.shared}")
    cli = [sys.executable, "-m", "medfoundry.cli.main"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="batch_embed_") as tmp:
        tmp_path = Path(tmp)
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("path\n" + "\n".join(str(p.resolve()) for p in images) + "\n")
        wall, load = timed([*cli, "embed", *map(str, images), "--out", str(tmp_path / "plain.npy")])
        plain = np.load(tmp_path / "plain.npy")
        rows.append({"config": "medfoundry embed (one process, torch threads = all CPUs)", "wall_s": round(wall, 2),
                     "images_per_s": round(len(images) / wall, 2), "loadavg_1min_at_start": load})
        print(rows[-1], flush=True)
        order = {str(p.resolve()): i for i, p in enumerate(images)}
        for workers in (1, 2):
            out = tmp_path / f"ray{workers}"
            wall, load = timed([*cli, "batch", "embed", "--manifest", str(manifest), "--out", str(out), "--workers",
                                str(workers), "--num-cpus", str(os.cpu_count()), "--batch-size",
                                str(args.batch_size), "--json"])
            table = pq.read_table(out / "results")
            got = np.zeros_like(plain)
            for src, emb in zip(table.column("source").to_pylist(), table.column("embedding").to_pylist(),
                                strict=True):
                got[order[src]] = emb
            rows.append({"config": f"medfoundry batch embed, Ray local, {workers} worker(s) "
                                   f"(torch threads {max(1, (os.cpu_count() or 1) // workers)} each)",
                         "wall_s": round(wall, 2), "images_per_s": round(len(images) / wall, 2),
                         "loadavg_1min_at_start": load, "items": table.num_rows,
                         "max_abs_diff_vs_plain": float(np.abs(got - plain).max())})
            print(rows[-1], flush=True)
    result = {"benchmark": "batch_embed", "images": len(images), "model": "medfoundry-clip-tiny",
              "source": "first images of shared medpix_ct_mr_captions/images", "rows": rows, "cpu": cpu_model(),
              "cpus": os.cpu_count(),
              "note": "wall time of each whole command (Python start, Ray start, model loading included) on a "
                      "2-core machine shared by many other processes at the same time (see the load averages); "
                      "run under nice -n 10",
              "command": "python benchmarks/batch_embed.py " + " ".join(sys.argv[1:]),
              "provenance": collect(name="medfoundry-clip-tiny", weights=EMBEDDED_CLIP, data=images, settings=args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
