"""SAM ViT-B through medfoundry — the float32 default (fused attention) and ``--precision bf16`` — versus
segment_anything's own eager fp32 SamPredictor, in the same run, on the same images and box prompts: full
encode + decode time and mask IoU.

No published SAM weights are reachable offline, so both sides load the same randomly initialised ViT-B
state dict (seeded); with real weights (``--weights sam_vit_b_01ec64.pth``) the comparison is the same.
Images: the CT and MR slices shipped with pydicom, and Kvasir/CXR images from ../shared/data when present.

    python benchmarks/sam_vit_b_speed.py --out benchmarks/results/sam_vit_b_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.models.sam import build_sam
from medfoundry.predict.segment import load_segmenter
from medfoundry.registry import get_record
from medfoundry.samples import shared_data_dir


def images() -> list:
    from pydicom.data import get_testdata_file

    out = [read_image(get_testdata_file("CT_small.dcm")), read_image(get_testdata_file("MR_small.dcm"))]
    shared = shared_data_dir()
    if shared is not None:
        out.append(read_image(sorted((Path(shared) / "kvasir_seg" / "images").glob("*.jpg"))[0]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None, help="a real SAM ViT-B checkpoint (default: seeded random init)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/sam_vit_b_speed.json")
    args = ap.parse_args()
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    state = build_sam({"encoder": "vit_b"}).state_dict() if args.weights is None else args.weights
    reference = sam_model_registry["vit_b"]()
    if args.weights is None:
        reference.load_state_dict(state)
    else:
        from medfoundry.registry.loading import load_state_dict

        reference.load_state_dict(load_state_dict(Path(args.weights)))
    predictor = SamPredictor(reference.eval())
    ours = {"fp32": load_segmenter(get_record("sam-vit-b"), state),  # the default: fused attention, float32
            "bf16": load_segmenter(get_record("sam-vit-b"), state).set_precision("bf16")}
    rows = []
    for k, image in enumerate(images()):
        rgb = image.to_display()
        rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 else rgb
        h, w = rgb.shape[:2]
        box = np.array([w * 0.3, h * 0.3, w * 0.7, h * 0.7], dtype=np.float32)
        times: dict[str, list[float]] = {"segment_anything_fp32": [], **{name: [] for name in ours}}
        masks = {}
        for _ in range(args.repeats):
            t = time.perf_counter()
            with torch.inference_mode():
                predictor.set_image(rgb)
                ref_masks, _, ref_logits = predictor.predict(box=box, multimask_output=False)
                ref_mask = ref_masks[0]
            times["segment_anything_fp32"].append(time.perf_counter() - t)
            for name, seg in ours.items():
                seg._cache.clear()  # time a fresh encode every repeat
                t = time.perf_counter()
                seg.set_image(image)
                masks[name] = seg.predict(boxes=box[None]).best()[0]
                times[name].append(time.perf_counter() - t)
        row = {"image": k, "shape": [h, w], "segment_anything_fp32_s": min(times["segment_anything_fp32"]),
               "mask_fraction": float(ref_mask.mean()),
               # how fragile the reference mask is: low-resolution logits within ±0.1 of the threshold
               "reference_logits_near_threshold": float((np.abs(ref_logits) < 0.1).mean())}
        for name, mask in masks.items():
            union = (ref_mask | mask).sum()
            row[f"medfoundry_{name}_s"] = min(times[name])
            row[f"speedup_{name}"] = min(times["segment_anything_fp32"]) / min(times[name])
            row[f"mask_iou_{name}"] = float((ref_mask & mask).sum() / union) if union else 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"benchmark": "SAM ViT-B encode+decode, medfoundry (fp32 default with fused attention; bf16) vs "
                            "segment_anything SamPredictor fp32",
               "weights": args.weights or "seeded random init (no published weights offline)",
               "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
               **{f"speedup_{n}_mean": float(np.mean([r[f"speedup_{n}"] for r in rows])) for n in ours},
               **{f"mask_iou_{n}_min": float(min(r[f"mask_iou_{n}"] for r in rows)) for n in ours},
               "images": rows,
               "provenance": collect(ours["fp32"], data=[im.source for im in images()], settings=args)}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "images"}, indent=2))


if __name__ == "__main__":
    main()
