"""CPU embedding speed of the embedded contrastive model, for several weights files of the same architecture
(e.g. medfoundry-clip-tiny v1 and v2) in one sitting, on the same images.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/clip_tiny_speed.py --shared ../shared/data --images 128 \
        [--weights v1.safetensors ...]

Writes benchmarks/results/clip_tiny_speed.json (images per second, batch 32, after one warm-up batch).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main() -> None:
    from medfoundry.eval.provenance import collect
    from medfoundry.io import read_image
    from medfoundry.predict.contrastive import open_contrastive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--weights", action="append", default=[], help="other weights of the same model")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/clip_tiny_speed.json")
    args = parser.parse_args()
    paths = sorted((Path(args.shared) / "medpix_ct_mr_captions" / "images").glob("*.jpg"))[: args.images]
    images = [read_image(p) for p in paths]
    runs, provenance = [], {}
    load_before = os.getloadavg()[0]
    for weights in [None, *args.weights]:
        predictor = open_contrastive("medfoundry-clip-tiny", weights)
        predictor.embed_images(images[:32])  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            predictor.embed_images(images)
            times.append(time.perf_counter() - t0)
        runs.append({"weights": weights or "embedded", "images_per_s": round(len(images) / min(times), 1),
                     "seconds_best": round(min(times), 3), "seconds_all": [round(t, 3) for t in times]})
        provenance[weights or "embedded"] = collect(predictor, data=paths, settings=args)
        print(json.dumps(runs[-1]))
    result = {"benchmark": "medfoundry-clip-tiny image embedding on the CPU (read images in memory; "
                           "preprocessing + image tower), best of repeats",
              "images": len(images), "torch_threads": torch.get_num_threads(),
              "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)], "runs": runs,
              "provenance": provenance}  # one entry per weights file: its sha256, the images, the machine
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
