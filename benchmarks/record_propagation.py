"""Record full box-propagation trajectories on the tuning patients, for replaying stop rules and shape priors.

For each tuning patient (DeepLesion 000001/000002 and the ``tune`` part of sts_ct_sarcoma_3d — never a
reporting patient), :func:`medfoundry.tasks.volume.propagation_step` is run from the key-slice box to both ends
of the volume with no stop rule but the vanished mask (a stop rule only truncates this trajectory, so every
stop rule replays exactly on it). Written per patient: the predicted masks (gated and not) and IoUs, the truth,
the CT values, the gate span, the key slice and the voxel spacing, as ``OUT/<patient>.npz`` (not committed: a
run folder), and ``OUT/provenance.json`` (model, weights sha256, data, arguments, code, machine), which
``tune_shape_prior.py`` copies into its results. A folder recorded with other weights, data or code is refused.

    nice -n 10 python benchmarks/record_propagation.py --out runs/shape_traj
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfoundry.datasets.splits import LESION_TRAIN_PATIENTS, sts_split
from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import open_segmenter
from medfoundry.tasks.volume import gate_mask, intensity_range, propagation_step

SCALES = (0.75, 0.9, 1.0)


def tuning_volumes(shared: Path) -> list[tuple[str, object, np.ndarray, int]]:
    """(patient, volume, truth (Z, Y, X) bool, key slice) of every tuning patient, DeepLesion first."""
    out = []
    for path in sorted((shared / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")):
        patient = path.stem.split("_")[2]
        if patient in LESION_TRAIN_PATIENTS:
            truth = read_image(path, key="gts").array > 0
            out.append((patient, read_image(path, key="imgs"), truth, int(truth.sum(axis=(1, 2)).argmax())))
    root = shared / "sts_ct_sarcoma_3d"
    with open(root / "cases.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["patient_id"])
    split = sts_split([r["patient_id"] for r in rows])
    for r in rows:
        if split[r["patient_id"]] == "tune":
            volume = replace(read_image(root / r["volume_file"]), units="HU", modality="CT")
            out.append((r["patient_id"], volume, read_image(root / r["mask_file"]).array > 0, int(r["key_slice"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--model", default="medfoundry-sam-lite")
    ap.add_argument("--patients", default="")
    ap.add_argument("--out", default="runs/shape_traj")
    args = ap.parse_args()
    seg = open_segmenter(args.model)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    shared = Path(args.shared)
    provenance = collect(seg, data=[shared / "deeplesion_ct_lesion_3d" / "volumes", shared / "sts_ct_sarcoma_3d"],
                         settings=args)
    recorded = Path(args.out) / "provenance.json"
    if recorded.is_file():  # resuming: the trajectories already there must come from the same model, data, code
        def same(p: dict) -> tuple:
            return p["model"], p["weights_sha256"], p["dataset"]["sha256"], p["code"]["git_commit"]

        if same(json.loads(recorded.read_text())["provenance"]) != same(provenance):
            raise SystemExit(f"{args.out} was recorded with other weights, data or code "
                             f"({recorded}): give a new --out")
    else:
        recorded.write_text(json.dumps({"what": "box-propagation trajectories of the tuning patients (*.npz)",
                                        "provenance": provenance}, indent=1) + "\n")
    volumes = sorted(tuning_volumes(Path(args.shared)), key=lambda v: v[2].size)  # small ones first
    for patient, volume, truth, key in volumes:
        target = Path(args.out) / f"{patient}.npz"
        if target.is_file() or (args.patients and patient not in args.patients.split(",")):
            continue
        pred, raw = np.zeros_like(truth), np.zeros_like(truth)
        iou = np.full(truth.shape[0], np.nan)
        seg.set_image(volume.slice(key))
        result = seg.predict(boxes=mask_box(truth[key])[None])
        first = result.best()[0]
        span = intensity_range(volume.array[key], first, 5.0)
        pred[key], raw[key] = gate_mask(first, volume.array[key], span), first
        iou[key] = float(result.iou.max())
        for step in (1, -1):
            prev, z = pred[key], key + step
            while 0 <= z < truth.shape[0] and prev.sum() >= 8:
                seg.set_image(volume.slice(z))
                pred[z], iou[z], raw[z] = propagation_step(seg, volume.array[z], prev, SCALES, span)
                prev, z = pred[z], z + step
        np.savez_compressed(target, pred=pred, raw=raw, iou=iou, truth=truth, key=key,
                            values=volume.array.astype(np.int16),
                            spacing=np.asarray(volume.spacing, dtype=np.float64), span=np.asarray(span))
        print(patient, int(pred.sum()), int(truth.sum()), flush=True)


if __name__ == "__main__":
    main()
