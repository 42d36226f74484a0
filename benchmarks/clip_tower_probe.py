"""What the candidate image towers of medfoundry-clip know about MedPix modality, plane and body region (issue 14).

Issue 14 names LiteMedSAM's TinyViT encoder (medical-pretrained on about 1.5 M image–mask pairs) as a candidate
start for the CLIP image tower. Its compute cost is in ``clip_tower_flops.json``. This script measures what its
features hold, against the shipped tower's. Each tower embeds every MedPix image once through its own input
contract. Then a linear probe (standardised features, class-balanced logistic regression, a few C values) is fit
on the training cases and scored on the held-out cases (``medpix_val_cases``). The probe is supervised, so it
bounds from above what a zero-shot head on these features could do.

Features:
- ``medfoundry-clip-tiny``: the 256-d L2-normalised image embedding.
- ``litemedsam``: the (256, 64, 64) image embedding (the encoder at the precision medfoundry picks for the
  CPU), pooled to its channel means and maxima (512-d), and also to a 4 × 4 grid of means (4,096-d).
- ``raw pixels``: the image as 32 × 32 grey values (the trivial baseline).

Balanced accuracy with 95 % bootstrap intervals over held-out images; the majority class scores 1 / classes.

    OMP_NUM_THREADS=1 python benchmarks/clip_tower_probe.py [--limit N]   # → results/clip_tower_probe.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from medfoundry.eval.bootstrap import bootstrap_ci
from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.predict.contrastive import open_contrastive
from medfoundry.predict.preprocess import preprocess
from medfoundry.predict.segment import open_segmenter
from medfoundry.registry.sources import cache_dir
from medfoundry.train.captioner import medpix_rows

OUT = Path(__file__).parent / "results" / "clip_tower_probe.json"
ATTRIBUTES = {"modality": "modality", "plane": "plane", "region": "body_region"}


def litemedsam_features(seg: Any, paths: list[str], cache: Path) -> np.ndarray:
    """(N, 512 + 4096) pooled embeddings of the LiteMedSAM segmenter ``seg``, cached per image list (resumable
    every 50 images)."""
    print(f"litemedsam encoder precision: {seg.precision}", flush=True)
    done = list(np.load(cache)) if cache.is_file() else []
    for i in range(len(done), len(paths)):
        pixels, _ = preprocess(read_image(paths[i]), seg.record.preprocess)
        with torch.inference_mode():
            emb = seg.model.embed(pixels[None]).float()
        grid = torch.nn.functional.adaptive_avg_pool2d(emb, 4).flatten(1)
        done.append(torch.cat([emb.mean((2, 3)), emb.amax((2, 3)), grid], 1)[0].numpy().astype(np.float16))
        if (i + 1) % 50 == 0 or i + 1 == len(paths):
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, np.stack(done))
            print(f"litemedsam {i + 1}/{len(paths)}", flush=True)
    return np.stack(done).astype(np.float32)


def raw_pixels(paths: list[str]) -> np.ndarray:
    """(N, 1024) grey values at 32 × 32 (the image squashed, through its display window)."""
    out = []
    for p in paths:
        image = read_image(p)
        grey = np.asarray(image.to_display(), dtype=np.float32)
        grey = grey.mean(-1) if grey.ndim == 3 else grey
        t = torch.nn.functional.interpolate(torch.from_numpy(grey)[None, None], size=(32, 32), mode="area")
        out.append(t.flatten().numpy() / 255.0)
    return np.stack(out)


def probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray, n_boot: int) -> dict:
    """Best-C balanced accuracy on the held-out rows (C chosen on the training rows by 3-fold CV)."""
    from sklearn.model_selection import GridSearchCV

    x = StandardScaler().fit(features[train]).transform(features)
    search = GridSearchCV(LogisticRegression(max_iter=3000, class_weight="balanced"), {"C": [0.003, 0.03, 0.3]},
                          scoring="balanced_accuracy", cv=3).fit(x[train], labels[train])
    pred = search.predict(x[~train])
    truth = labels[~train]
    ci = bootstrap_ci(lambda idx: balanced_accuracy_score(truth[idx], pred[idx]), len(truth), n=n_boot)
    return {"balanced_accuracy": round(float(balanced_accuracy_score(truth, pred)), 4),
            "ci95": [round(v, 4) for v in ci], "C": search.best_params_["C"]}


def attribute_labels(rows: list[dict], attr: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows' labels of one attribute of :data:`ATTRIBUTES`, and which rows have one (not ``other``)."""
    labels = np.array([r[ATTRIBUTES[attr]] for r in rows])
    return labels, labels != "other"


def probe_towers(rows: list[dict], train: np.ndarray, towers: dict[str, np.ndarray], n_boot: int) -> dict:
    """Per attribute: its classes, chance, held-out count and each tower's :func:`probe` result."""
    results: dict[str, dict] = {}
    for attr in ATTRIBUTES:
        labels, keep = attribute_labels(rows, attr)
        results[attr] = {"classes": sorted(set(labels[keep])), "chance": round(1 / len(set(labels[keep])), 4),
                         "held_out_images": int((keep & ~train).sum())}
        for name, feats in towers.items():
            results[attr][name] = probe(feats[keep], labels[keep], train[keep], n_boot)
        print(attr, json.dumps(results[attr]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each split (a quick look)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = []
    for split in ("train", "val"):
        part = medpix_rows(args.shared, split)
        rows += [dict(r, split=split) for r in part[: args.limit]]
    paths = [r["path"] for r in rows]
    train = np.array([r["split"] == "train" for r in rows])
    start = time.perf_counter()
    clip = open_contrastive("medfoundry-clip-tiny")
    key = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]
    towers = {"medfoundry-clip-tiny": clip.embed_images(paths),
              "litemedsam (channel mean + max, 512-d)": None,
              "litemedsam (4 x 4 grid of means, 4096-d)": None,
              "raw pixels 32 x 32": raw_pixels(paths)}
    seg = open_segmenter("litemedsam")  # precision "auto": what medfoundry picks for this CPU
    lite = litemedsam_features(seg, paths, cache_dir() / "benchmarks" / "clip_tower_probe" / f"litemedsam_{key}.npy")
    towers["litemedsam (channel mean + max, 512-d)"] = lite[:, :512]
    towers["litemedsam (4 x 4 grid of means, 4096-d)"] = lite[:, 512:]
    results = probe_towers(rows, train, towers, args.bootstrap)
    out = {"benchmark": "clip_tower_probe", "images": {"train": int(train.sum()), "held_out": int((~train).sum())},
           "split": "MedPix cases by medpix_val_cases (held out never used to fit the probe)",
           "results": results, "seconds": round(time.perf_counter() - start, 1),
           "threads": torch.get_num_threads(),  # the CPU model is in each provenance entry
           "command": "OMP_NUM_THREADS=1 python benchmarks/clip_tower_probe.py"
                      + (f" --limit {args.limit}" if args.limit else ""),
           "provenance": {"medfoundry-clip-tiny": collect(clip, settings=args),
                          "litemedsam": collect(seg, settings=args)},
           "load_average": os.getloadavg()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
