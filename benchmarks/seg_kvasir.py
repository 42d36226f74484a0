"""Box-prompted 2D segmentation on Kvasir-SEG images never used in training, beside the no-model baseline.

The prompt is the tight box of the ground-truth mask; Dice is computed at the original image resolution.
Baseline: the ellipse inscribed in the same box. Also times image encoding and further prompts on this CPU.

    python benchmarks/seg_kvasir.py --shared ../shared/data --out benchmarks/results/seg_kvasir.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from medfoundry.datasets.segmentation import shared_manifest
from medfoundry.eval.baselines import dice, ellipse_in_box
from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import TTA_MODES, open_segmenter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--model", default="medfoundry-sam-lite")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default="benchmarks/results/seg_kvasir.json")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--tta", nargs="?", const="logits", default="none", choices=TTA_MODES[1:],
                    help="as `segment --tta`: embedding = mirrored encoding averaged into the embedding; "
                         "logits = every prompt decoded on both, masks averaged")
    ap.add_argument("--embed-pool", type=int, default=1, help="2: decode on the pooled 32×32 embedding (faster)")
    ap.add_argument("--fast-prompts", action="store_true",
                    help="as `segment --fast-prompts`: a fused bf16 decoder where the CPU has native bf16")
    ap.add_argument("--decoder-precision", choices=["reference", "default", "fp32", "bf16"], default="default",
                    help="reference: segment_anything's whole decoder for every prompt; default: the predictor's "
                         "(its modules, image side prepared once per crop); fp32/bf16: also fused attention "
                         "(bf16 weights)")
    ap.add_argument("--text", default=None, help='prompt with text instead of the box (e.g. "a colon polyp"): '
                                                 "medfoundry-clip-tiny's grounding map proposes the box")
    args = ap.parse_args()
    manifest = shared_manifest(args.shared, Path(tempfile.gettempdir()) / "medfoundry_bench_manifest.jsonl")
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows = [r for r in rows if r["source"] == "kvasir" and r["split"] == "val"][: args.limit]
    if args.fast_prompts:
        from medfoundry.models.sam_fast import native_bf16

        args.decoder_precision = "bf16" if native_bf16() else "fp32"
    seg = open_segmenter(args.model, args.weights, tta=args.tta, embed_pool=args.embed_pool)
    if args.decoder_precision == "reference":  # segment_anything's decoder, all of it for every prompt
        seg.prepare_embeddings = False
    elif args.decoder_precision != "default":
        seg.set_decoder_precision(args.decoder_precision)
    clip = None
    if args.text:
        from medfoundry.predict.contrastive import open_contrastive
        from medfoundry.tasks.text_to_mask import segment_by_text

        clip = open_contrastive("medfoundry-clip-tiny")
    model_d, base_d, enc_t, dec_t = [], [], [], []
    for r in rows:
        image = read_image(manifest.parent / r["image"])
        truth = read_image(manifest.parent / r["mask"]).array > 0
        box = mask_box(truth)
        if clip is not None:
            model_d.append(dice(segment_by_text(clip, seg, image, args.text).mask, truth))
            base_d.append(dice(ellipse_in_box(truth.shape, box), truth))
            continue
        seg.set_image(image)
        t0 = time.perf_counter()
        pred = seg.predict(boxes=box[None]).best()[0]
        t1 = time.perf_counter()
        seg.predict(boxes=box[None], points=np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]),
                    point_labels=np.array([1]))
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        model_d.append(dice(pred, truth))
        base_d.append(dice(ellipse_in_box(truth.shape, box), truth))
    result = {
        "benchmark": "Kvasir-SEG box-prompted segmentation, developer-part images held out from training",
        "cases": len(rows), "model": seg.record.name, "tta": args.tta, "text_prompt": args.text,
        "embed_pool": args.embed_pool, "decoder_precision": args.decoder_precision,
        "dice_mean": float(np.mean(model_d)), "dice_median": float(np.median(model_d)),
        "baseline_ellipse_in_box_dice_mean": float(np.mean(base_d)),
        "first_prompt_seconds_median (crop encode + decode)": float(np.median(enc_t)) if enc_t else None,
        "further_prompt_seconds_median (decode only, cached embedding)": float(np.median(dec_t)) if dec_t else None,
        "per_case_dice": [round(d, 4) for d in model_d],
        "provenance": collect(seg, data=[manifest.parent / r[k] for r in rows for k in ("image", "mask")],
                              settings=args),
    }
    if clip is not None:  # --text: the grounding map's model proposes the box, so its weights are recorded too
        result["provenance"]["text_model"] = collect(clip, settings=args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "per_case_dice"}, indent=2))


if __name__ == "__main__":
    main()
