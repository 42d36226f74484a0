"""What Merlin/Astra's 3D CT encoder (astra-ct-encoder) features are worth: a patient-grouped linear probe.

Task (a): lesion-containing vs lesion-free 3D crops. Every volume of ``sts_ct_sarcoma_3d`` (soft-tissue sarcoma,
reference masks) and ``deeplesion_ct_lesion_3d`` (DeepLesion key-slice stacks, reference masks) is put through
the record's own geometry (RAS, 1.5 × 1.5 × 3 mm, trilinear; masks the same way, thresholded at 0.5); one crop
is centred on the lesion's centroid and one on a random position whose whole crop holds no lesion voxel and
mostly tissue (mean HU > -700). Crops are small (default 32 × 32 × 16 voxels = 48 mm cubes) because the CPU
is shared; the encoder accepts any size that survives its five halvings.
Features, each under the same probe (standardised logistic regression, out-of-fold probabilities from a 5-fold
patient-grouped split): the encoder's 2048-d global average; a 32-bin histogram of the crop's HU (-1000..1000),
the raw-intensity baseline; the embedded 2D CLIP (medfoundry-clip-tiny) averaged over the crop's axial slices.
AUROC and balanced accuracy with 95 % patient-bootstrap intervals.
Task (b), body region of whole volumes, is reported as not run when the data has fewer than two regions with
two patients each (sts: all EXTREMITY; DeepLesion stacks carry no region label; TotalSegmentator: one volume).
Features are cached under runs/ (ignored by git).

    nice -n 10 python benchmarks/ct_encoder_probe.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from medfoundry.eval.provenance import collect
from medfoundry.io import MedImage, read_image
from medfoundry.predict.volume_encoder import resample, to_ras

SPACING = (1.5, 1.5, 3.0)


def cases(shared: Path) -> list[dict]:
    out = []
    with open(shared / "sts_ct_sarcoma_3d" / "cases.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            out.append({"patient": r["patient_id"], "source": "sts", "image": shared / "sts_ct_sarcoma_3d" /
                        r["volume_file"], "mask": shared / "sts_ct_sarcoma_3d" / r["mask_file"], "key": None})
    with open(shared / "deeplesion_ct_lesion_3d" / "metadata.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            path = shared / "deeplesion_ct_lesion_3d" / r["file"]
            out.append({"patient": "DL" + r["patient_id"], "source": "deeplesion", "image": path, "mask": path,
                        "key": "gts"})
    return out


def _crop(array: np.ndarray, centre, size, fill: float) -> np.ndarray:
    half = [s // 2 for s in size]
    padded = np.pad(array, [(h, s) for h, s in zip(half, size, strict=True)], constant_values=fill)
    return padded[tuple(slice(int(c), int(c) + s) for c, s in zip(centre, size, strict=True))]


def crops_of(case: dict, size: tuple[int, int, int], rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """[(HU crop (X, Y, Z), label)]: the lesion crop (1) and, where one exists, a lesion-free crop (0)."""
    image = read_image(case["image"])
    mask = read_image(case["mask"], key=case["key"]) if case["key"] else read_image(case["mask"])
    mask = MedImage(array=(np.asarray(mask.array) > 0).astype(np.float32), spacing=image.spacing,
                    origin=image.origin, direction=image.direction)
    hu = resample(*to_ras(image), SPACING)
    lesion = resample(*to_ras(mask), SPACING) > 0.5
    if not lesion.any():
        return []
    out = [(_crop(hu, np.round(np.argwhere(lesion).mean(0)), size, -1000.0), 1)]
    pads = [(s // 2, s) for s in size]
    hu_p, lesion_p = np.pad(hu, pads, constant_values=-1000.0), np.pad(lesion, pads)
    grid = [np.arange(0, n, max(s // 4, 1)) for n, s in zip(hu.shape, size, strict=True)]

    def window(a: np.ndarray, c) -> np.ndarray:
        return a[tuple(slice(int(v), int(v) + s) for v, s in zip(c, size, strict=True))]

    candidates = [c for c in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 3)
                  if not window(lesion_p, c).any() and window(hu_p, c).mean() > -700]
    if candidates:
        out.append((window(hu_p, candidates[rng.integers(len(candidates))]).copy(), 0))
    return out


def features(crops: list[np.ndarray], predictor, clip) -> dict[str, np.ndarray]:
    enc, times = [], []
    for c in crops:
        t = time.perf_counter()
        enc.append(predictor.features(np.clip((c + 1000.0) / 2000.0, 0, 1)[None])[0])
        times.append(time.perf_counter() - t)
    hist = np.stack([np.histogram(np.clip(c, -1000, 1000), bins=32, range=(-1000, 1000))[0] / c.size for c in crops])
    clip_rows = []
    for c in crops:
        slices = [MedImage(array=c[:, :, k].T, spacing=SPACING[:2], modality="CT", units="HU")
                  for k in range(c.shape[2])]
        e = clip.embed_images(slices).mean(0)
        clip_rows.append(e / np.linalg.norm(e))
    return {"astra-ct-encoder": np.stack(enc), "hu-histogram": hist, "medfoundry-clip-tiny (slice mean)":
            np.stack(clip_rows), "encoder_seconds": np.asarray(times)}


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medfoundry.eval.bootstrap import bootstrap_ci

    p = np.zeros(len(y))
    for train, test in StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0).split(x, y, groups):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(x[train], y[train])
        p[test] = head.predict_proba(x[test])[:, 1]
    auc = lambda i: roc_auc_score(y[i], p[i])  # noqa: E731
    bacc = lambda i: balanced_accuracy_score(y[i], p[i] > 0.5)  # noqa: E731
    every = np.arange(len(y))
    return {"auroc": round(float(auc(every)), 4),
            "auroc_ci95": [round(v, 4) for v in bootstrap_ci(auc, len(y), groups)],
            "balanced_accuracy": round(float(bacc(every)), 4),
            "balanced_accuracy_ci95": [round(v, 4) for v in bootstrap_ci(bacc, len(y), groups)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--size", default="32,32,16", help="crop size in voxels at 1.5 x 1.5 x 3 mm (X,Y,Z)")
    ap.add_argument("--cache", default="runs/ct_encoder_probe_features.npz")
    ap.add_argument("--out", default="benchmarks/results/ct_encoder_probe.json")
    args = ap.parse_args()
    size = tuple(int(s) for s in args.size.split(","))
    shared = Path(args.shared)
    cache = Path(args.cache)
    models_json = cache.with_suffix(".provenance.json")  # the models that computed the cached features
    data = [shared / "sts_ct_sarcoma_3d" / "cases.csv", shared / "deeplesion_ct_lesion_3d" / "metadata.csv",
            *sorted({p for c in cases(shared) for p in (c["image"], c["mask"])})]
    t0 = time.perf_counter()
    from_cache = cache.is_file() and models_json.is_file()
    if from_cache:
        z = np.load(cache, allow_pickle=False)
        feats = {k: z[k] for k in z.files if k not in ("y", "groups")}
        y, groups = z["y"], z["groups"]
        provenance = json.loads(models_json.read_text())
    else:
        from medfoundry.predict.contrastive import open_contrastive
        from medfoundry.predict.volume_encoder import load_volume_encoder
        from medfoundry.registry.loading import fetch_weights

        record, weights = fetch_weights("astra-ct-encoder")
        encoder, clip = load_volume_encoder(record, weights), open_contrastive("medfoundry-clip-tiny")
        provenance = {"astra-ct-encoder": collect(name=record.name, weights=weights, data=data, settings=args),
                      "medfoundry-clip-tiny": collect(clip, data=data, settings=args)}
        rng = np.random.default_rng(0)
        crops, y, groups = [], [], []
        for case in cases(shared):
            for crop, label in crops_of(case, size, rng):
                crops.append(crop)
                y.append(label)
                groups.append(case["patient"])
        feats = features(crops, encoder, clip)
        y, groups = np.asarray(y), np.asarray(groups)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, y=y, groups=groups, **feats)
        models_json.write_text(json.dumps(provenance, indent=1) + "\n")
    seconds = feats.pop("encoder_seconds")
    results = {name: probe(x, y, groups) for name, x in feats.items()}
    out = {
        "task_a": "lesion-containing vs lesion-free 3D crops, patient-grouped 5-fold linear probe",
        "crop_voxels_xyz": list(size), "crop_mm": [s * d for s, d in zip(size, SPACING, strict=True)],
        "crops": len(y), "lesion_crops": int(y.sum()), "patients": len(set(groups.tolist())),
        "results": results,
        "task_b": "not run: sts_ct_sarcoma_3d is all EXTREMITY, DeepLesion stacks carry no body-region label, and "
                  "totalsegmentator_examples holds one volume, so no two regions have two patients each",
        "encoder_seconds_per_crop_median": round(float(np.median(seconds)), 2),
        "note": f"reduced run: small crops on a CPU shared by several jobs; features cached in {args.cache}",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        # one entry per model; from the cache's side file when the features were cached (the models that made them)
        "provenance": provenance, "features_from_cache": from_cache,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
