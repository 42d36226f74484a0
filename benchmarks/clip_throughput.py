"""Image-embedding throughput of an open_clip ViT-B/16 on this CPU: medfoundry ``--precision bf16`` (and int8)
versus open_clip's own eager fp32 loop (its PIL preprocessing + ``encode_image``), same images, same run.

No published weights are reachable offline, so the checkpoint is a seeded random-init ViT-B/16 written as an
open_clip folder (the format BiomedCLIP is published in); ``--folder`` takes a real one. Images: real files
from ../shared/data (PneumoniaMNIST val PNGs via `medfoundry eval prepare`, Kvasir JPEGs) or pydicom's.

    python benchmarks/clip_throughput.py --out benchmarks/results/clip_throughput.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medfoundry.eval.provenance import collect
from medfoundry.predict.contrastive import load_contrastive, save_open_clip_folder
from medfoundry.registry import ModelRecord
from medfoundry.samples import shared_data_dir

MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def image_files(n: int, tmp: Path) -> list[Path]:
    shared = shared_data_dir()
    files: list[Path] = []
    if shared is not None:
        files = sorted((Path(shared) / "kvasir_seg" / "images").glob("*.jpg"))[: n // 2]
        with np.load(Path(shared) / "pneumoniamnist_balanced" / "pneumoniamnist_balanced_trainval.npz") as z:
            for i, arr in enumerate(z["val_images"][: n - len(files)]):
                Image.fromarray(arr).save(tmp / f"cxr{i}.png")
                files.append(tmp / f"cxr{i}.png")
    while len(files) < n:  # without the shared data: pydicom's CT slice, rendered
        from pydicom.data import get_testdata_file

        from medfoundry.io import read_image

        Image.fromarray(read_image(get_testdata_file("CT_small.dcm")).to_display()).save(tmp / f"ct{len(files)}.png")
        files.append(tmp / f"ct{len(files)}.png")
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default=None, help="an open_clip model folder (default: seeded random ViT-B-16)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/clip_throughput.json")
    args = ap.parse_args()
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.folder is None:
            torch.manual_seed(0)
            model = open_clip.create_model("ViT-B-16", pretrained=None)
            folder = save_open_clip_folder(model, {"model_cfg": open_clip.get_model_config("ViT-B-16"),
                                                   "preprocess_cfg": {"mean": MEAN, "std": STD}}, tmp / "vitb16")
        else:
            folder = Path(args.folder)
        files = image_files(args.images, tmp)
        reference = open_clip.create_model(f"local-dir:{folder}").eval()
        transform = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
        record = ModelRecord.from_dict({
            "name": "open-clip-vit-b-16", "arch": "open_clip", "family": "TPM-contrastive",
            "tasks": ["zero-shot-classification", "embedding"], "modalities": ["CR"], "license": "MIT",
            "commercial_use": True, "paper": "open_clip", "training_data": "none (benchmark)",
            "preprocess": {"image_size": 224, "resize": "shortest_crop", "channels": 3, "intensity": "uint8",
                           "scale": 1.0, "mean": MEAN, "std": STD, "interpolation": "bicubic"}})

        def open_clip_loop() -> np.ndarray:
            out = []
            with torch.inference_mode():
                for i in range(0, len(files), args.batch_size):
                    chunk = files[i : i + args.batch_size]
                    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in chunk])
                    out.append(F.normalize(reference.encode_image(batch), dim=-1))
            return torch.cat(out).numpy()

        results = {}
        open_clip_loop()  # warm-up
        t = time.perf_counter()
        ref = open_clip_loop()
        results["open_clip_fp32_s"] = time.perf_counter() - t
        for precision in ("fp32", "bf16", "int8"):
            ours = load_contrastive(record, folder).set_precision(precision)
            ours.batch_size = args.batch_size
            ours.embed_images(files[: args.batch_size])  # warm-up
            t = time.perf_counter()
            emb = ours.embed_images(files)
            seconds = time.perf_counter() - t
            cos = (emb * ref).sum(axis=1)
            results[precision] = {"seconds": seconds, "speedup": results["open_clip_fp32_s"] / seconds,
                                  "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                                  "images_per_s": len(files) / seconds}
            print(precision, json.dumps(results[precision]), flush=True)
        provenance = collect(ours, data=files, settings=args)  # while the folder and images still exist
    summary = {"benchmark": "open_clip ViT-B/16 image embedding throughput, medfoundry vs open_clip eager fp32",
               "weights": args.folder or "seeded random init (no published weights offline)",
               "images": len(files), "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
               **results, "provenance": provenance}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
