"""How the intensity gate of 3D propagation was chosen: replayed on tuning patients only.

For each tuning patient (DeepLesion 000001/000002, the ``tune`` part of sts_ct_sarcoma_3d), the ungated box
propagation of :func:`medfoundry.tasks.volume.segment_volume` is run once from the key-slice box, recording on
every slice (until 4 slices past the true tumour, or until the mask vanishes) the masks and predicted IoUs of
the three box hypotheses. Variants of the gate and of the choice among hypotheses are then replayed on these
recorded slices (the boxes stay those of the ungated run: an approximation — the gated propagation prompts
tighter boxes — that costs no further model call), with the same stop rules. The reporting patients are never
read. Model outputs are memoised per (slice, integer box) in ``--memo`` so a rerun costs nothing; the memo is
kept only for the same model, weights sha256 and code commit (:func:`medfoundry.eval.provenance.cache_key`).

    nice -n 10 python benchmarks/tune_sts3d_gate.py --patients 000001,000002,STS_003,STS_009 \\
        --out benchmarks/results/tune_sts3d_gate.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfoundry.eval.baselines import dice
from medfoundry.eval.prepare import UNSEEN_LESION_PATIENTS, sts_split
from medfoundry.eval.provenance import cache_key, collect
from medfoundry.io import read_image
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import open_segmenter
from medfoundry.tasks.volume import gate_mask, intensity_range, shrunk_boxes

SCALES = (0.75, 0.9, 1.0)


class Memo:
    """Model outputs per (slice content, integer XYXY box): (packed mask bits, predicted IoU), for one model,
    weights file and code version (a memo written by another is not read)."""

    def __init__(self, seg, path: Path) -> None:
        self.seg, self.path = seg, path
        self.key = {k: v for k, v in cache_key(seg, data_sha256=None, settings={}).items()
                    if k in ("model", "weights_sha256", "code")}
        stored = pickle.loads(path.read_bytes()) if path.is_file() else {}
        self.table = stored.get("table", {}) if stored.get("key") == self.key else {}
        self.reused = len(self.table)

    def predict(self, image, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tag = hashlib.sha1(np.ascontiguousarray(image.array).tobytes()).hexdigest()[:16] + str(image.units)
        h, w = image.spatial_shape
        masks, ious, ready = [], [], False
        for b in np.round(np.asarray(boxes, dtype=np.float32)):
            key = (tag, tuple(int(v) for v in b))
            if key not in self.table:
                if not ready:
                    self.seg.set_image(image)
                    ready = True
                r = self.seg.predict(boxes=b[None])
                self.table[key] = (np.packbits(r.best()[0]), float(r.iou[0].max()))
            bits, iou = self.table[key]
            masks.append(np.unpackbits(bits)[: h * w].reshape(h, w).astype(bool))
            ious.append(iou)
        return np.stack(masks), np.array(ious)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps({"key": self.key, "table": self.table}))
        os.replace(tmp, self.path)


def trajectory(memo: Memo, volume, truth: np.ndarray) -> tuple[int, dict]:
    """Ungated propagation from the key-slice box: {z: (candidate masks (3, H, W), their IoUs, chosen mask)}."""
    key = int(truth.sum(axis=(1, 2)).argmax())
    first = memo.predict(volume.slice(key), mask_box(truth[key])[None])[0][0]
    traj = {key: (first[None], np.ones(1), first)}
    zt = np.nonzero(truth.any(axis=(1, 2)))[0]
    for step in (1, -1):
        prev, z = first, key + step
        while 0 <= z < truth.shape[0] and zt[0] - 4 <= z <= zt[-1] + 4:
            bp = mask_box(prev)
            masks, ious = memo.predict(volume.slice(z), shrunk_boxes(bp, SCALES, truth.shape[1:]))
            m = masks[int(np.argmax(ious))].copy()
            x0, y0, x1, y1 = np.round(bp).astype(int)
            inside = np.zeros_like(m)
            inside[y0:y1, x0:x1] = True
            m &= inside
            traj[z] = (masks, ious, m)
            if m.sum() < 8:
                break
            prev, z = m, z + step
    return key, traj


def replay(values: np.ndarray, truth: np.ndarray, key: int, traj: dict, quantile: float | None, core: bool,
           only: int | None) -> float:
    """3D Dice of one gate variant on a recorded trajectory (stop rules as segment_volume's defaults)."""
    first = traj[key][2]
    span = None
    if quantile is not None:
        ref = first
        if core:  # the mask inside the ellipse inscribed in the central half of the key box
            x0, y0, x1, y1 = mask_box(truth[key])
            yy, xx = np.mgrid[: first.shape[0], : first.shape[1]]
            ell = (((xx - (x0 + x1) / 2) / ((x1 - x0) / 4)) ** 2 + ((yy - (y0 + y1) / 2) / ((y1 - y0) / 4)) ** 2) <= 1
            ref = first & ell if (first & ell).sum() >= 16 else first
        span = intensity_range(values[key], ref, quantile)
    gate = (lambda m, v: gate_mask(m, v, span)) if span is not None else (lambda m, v: m)
    out = np.zeros_like(truth)
    k = gate(first, values[key])
    out[key] = k
    ref_mean, ref_std = values[key][k].astype(np.float64).mean(), values[key][k].astype(np.float64).std() + 1e-6
    for step in (1, -1):
        prev, z = k, key + step
        while z in traj:
            masks, ious, chosen = traj[z]  # chosen: the best hypothesis inside the previous box
            m = gate(chosen if only is None else masks[int(np.argmax(ious)) if only < 0 else only], values[z])
            if m.sum() < 8 or m.sum() > 1.6 * prev.sum() or \
                    abs(values[z][m].astype(np.float64).mean() - ref_mean) / ref_std > 2.0:
                break
            out[z] = m
            prev, z = m, z + step
    return dice(out, truth)


VARIANTS = {"previous (no gate)": (None, False, None), "gate q5 (default)": (5.0, False, None),
            "gate q2": (2.0, False, None), "gate q10": (10.0, False, None),
            "gate q5, range from the central half of the box": (5.0, True, None),
            "gate q5, single box scale 1.0": (5.0, False, 2),
            "gate q5, not cut to the previous box": (5.0, False, -1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--patients", default="", help="comma-separated subset of the tuning patients (default: all)")
    ap.add_argument("--memo", default="runs/tune_sts3d_memo.pkl")
    ap.add_argument("--out", default="benchmarks/results/tune_sts3d_gate.json")
    args = ap.parse_args()
    root = Path(args.shared)
    with open(root / "sts_ct_sarcoma_3d" / "cases.csv", newline="", encoding="utf-8") as fh:
        sts = {r["patient_id"]: r for r in csv.DictReader(fh)}
    split = sts_split(list(sts))
    lesions = {p.stem.split("_")[2]: p for p in (root / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")}
    tuning = [p for p in sorted(lesions) if p not in UNSEEN_LESION_PATIENTS] + \
        [p for p in sorted(sts) if split[p] == "tune"]
    chosen = [p for p in args.patients.split(",") if p] or tuning
    if set(chosen) - set(tuning):
        raise SystemExit(f"not tuning patients: {sorted(set(chosen) - set(tuning))}")
    Path(args.memo).parent.mkdir(parents=True, exist_ok=True)
    memo = Memo(open_segmenter("medfoundry-sam-lite"), Path(args.memo))
    rows, files = [], [root / "sts_ct_sarcoma_3d" / "cases.csv"]
    for p in chosen:
        files += [root / "sts_ct_sarcoma_3d" / sts[p][k] for k in ("volume_file", "mask_file")] if p in sts else \
            [lesions[p]]
        if p in sts:
            folder = root / "sts_ct_sarcoma_3d"
            volume = replace(read_image(folder / sts[p]["volume_file"]), units="HU", modality="CT")
            truth = read_image(folder / sts[p]["mask_file"]).array > 0
        else:
            volume = read_image(lesions[p], key="imgs")
            truth = read_image(lesions[p], key="gts").array > 0
        key, traj = trajectory(memo, volume, truth)
        memo.save()
        rows.append({"patient": p, "dataset": "sts" if p in sts else "deeplesion",
                     **{name: replay(volume.array, truth, key, traj, *v) for name, v in VARIANTS.items()}})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"what": "3D Dice of gate variants replayed on recorded ungated trajectories, tuning patients only",
               "model": "medfoundry-sam-lite",
               "mean": {ds: {name: float(np.mean([r[name] for r in rows if r["dataset"] == ds])) for name in VARIANTS}
                        for ds in sorted({r["dataset"] for r in rows})},
               "patients": rows, "memo_entries_reused": memo.reused,
               "provenance": collect(memo.seg, data=files, settings=args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["mean"], indent=2))


if __name__ == "__main__":
    main()
