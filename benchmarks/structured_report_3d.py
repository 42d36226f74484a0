"""Structured-report measurements of 3D CT lesions from one box on the key slice, against the reference mask.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/structured_report_3d.py [--shared ../shared/data] [--sts 20]

For every DeepLesion sub-volume (``deeplesion_ct_lesion_3d``, 4) and soft-tissue-sarcoma CT crop
(``sts_ct_sarcoma_3d``, first ``--sts`` patients): key slice = the slice where the reference mask is largest;
prompt = the tight box of the reference mask there; the segmenter propagates it through the volume
(:func:`medfoundry.tasks.segmentation.segment`, as `medfoundry report --structured --propagate` does: box
propagation, or the model's own 3D inference for 3D models such as medfoundry-box3d-tiny); the
structured report (:func:`medfoundry.tasks.structured_report.structured_report`) of that mask and of the reference
mask give lesion 1's long axis (mm, RECIST-style on its longest slice) and volume (mL). Errors: absolute long-axis
error (mm) and relative volume error, medians over cases. Baseline, measured the same way: the ellipsoid inscribed
in the reference mask's 3D bounding box (it knows the true z-extent, which the box on one slice does not give),
and ``keybox``: the ellipsoid from the key-slice box alone (its z semi-axis the mean in-plane one, in mm). 3D Dice
of each is recorded beside the measurements.
``--predictions DIR ...`` takes the masks an evaluation run already wrote (``medfoundry eval --benchmark
lesion-3d|sts-3d``: ``<run>/predictions/<case>.npz``) instead of running the segmenter again, and measures only
those cases. Writes ``benchmarks/results/structured_report_3d.json``. The propagation code is whatever
``tasks/volume.py`` is on this branch (its commit is recorded).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medfoundry.datasets.splits import UNSEEN_LESION_PATIENTS, sts_split  # noqa: E402
from medfoundry.eval.baselines import dice, ellipsoid_from_key_box, ellipsoid_in_box  # noqa: E402
from medfoundry.eval.provenance import collect  # noqa: E402
from medfoundry.io import read_image  # noqa: E402
from medfoundry.predict.boxes import mask_box  # noqa: E402
from medfoundry.predict.segment import open_segmenter  # noqa: E402
from medfoundry.tasks.segmentation import segment  # noqa: E402
from medfoundry.tasks.structured_report import structured_report  # noqa: E402


def lesion1(mask: np.ndarray, image) -> dict:
    r = structured_report(mask, image, model="-")
    return r["lesions"][0] if r["measurable"] else {"long_axis": 0.0, "volume_ml": 0.0}


def cases(shared: Path, n_sts: int):
    """DeepLesion and sarcoma cases alternately (so a time budget still samples both), loaded one at a time."""
    lesion = [(p.stem, "held-out" if p.stem.split("_")[2] in UNSEEN_LESION_PATIENTS else "trained on",
               lambda p=p: (read_image(p, key="imgs"), read_image(p, key="gts").array > 0))
              for p in sorted((shared / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz"))]
    base = shared / "sts_ct_sarcoma_3d"
    with open(base / "cases.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    split = sts_split([r["patient_id"] for r in rows])
    rows = rows[:n_sts]
    # the crops are HU, which their NIfTI files do not say: read them as the sts-3d benchmark does (soft-tissue
    # window), not through a percentile window
    sts = [(r["patient_id"], "held-out" if split[r["patient_id"]] == "report" else "tuned on",
            lambda r=r: (replace(read_image(base / r["volume_file"]), units="HU", modality="CT"),
                         read_image(base / r["mask_file"]).array > 0)) for r in rows]
    order = []
    for i in range(max(len(lesion), len(sts))):
        order += [("deeplesion", *lesion[i])] if i < len(lesion) else []
        order += [("sts", *sts[i])] if i < len(sts) else []
    for dataset, name, role, load in order:
        volume, truth = load()
        yield dataset, name, role, volume, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default="medfoundry-sam-lite")
    ap.add_argument("--sts", type=int, default=20, help="how many sarcoma patients (of 20)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "structured_report_3d.json"))
    ap.add_argument("--predictions", nargs="*", default=[],
                    help="eval-run prediction folders: measure their saved masks instead of segmenting")
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="stop starting new cases after this many seconds (the results say how many ran)")
    args = ap.parse_args()
    saved = {p.stem: p for folder in args.predictions for p in Path(folder).glob("*.npz")}
    seg = None if saved else open_segmenter(args.model, None)
    shared = Path(args.shared)
    with open(shared / "sts_ct_sarcoma_3d" / "cases.csv", encoding="utf-8") as fh:
        sts_files = [shared / "sts_ct_sarcoma_3d" / r[k] for r in list(csv.DictReader(fh))[: args.sts]
                     for k in ("volume_file", "mask_file")]
    data = [shared / "deeplesion_ct_lesion_3d" / "volumes", shared / "sts_ct_sarcoma_3d" / "cases.csv", *sts_files,
            *sorted(saved.values())]
    provenance = {args.model: collect(seg, name=None if seg else args.model, data=data, settings=args)}
    for folder in args.predictions:  # the masks' own provenance: the evaluation run that wrote them
        run = Path(folder).parent / "results.json"
        provenance[f"eval_run:{Path(folder).parent.name}"] = (
            json.loads(run.read_text()).get("provenance") if run.is_file() else None)
    rows = []
    start = time.perf_counter()
    for dataset, name, role, volume, truth in cases(Path(args.shared), args.sts):
        if time.perf_counter() - start > args.budget_s:
            break
        if saved and name not in saved:
            continue
        t0 = time.perf_counter()
        key = int(truth.sum(axis=(1, 2)).argmax())
        if saved:
            packed = np.load(saved[name])
            pred = np.unpackbits(packed["mask"])[: truth.size].reshape(tuple(packed["shape"])).astype(bool)
        else:
            pred = segment(seg, volume, mask_box(truth[key])[None], slice_index=key, propagate=True).mask
        box_3d, key_box = ellipsoid_in_box(truth), ellipsoid_from_key_box(truth.shape, volume.spacing, key,
                                                                             mask_box(truth[key]))
        ref, ours, base, keybox = (lesion1(m, volume) for m in (truth, pred, box_3d, key_box))
        rows.append({
            "dataset": dataset, "case": name, "role": role, "key_slice": key,
            "spacing_mm": [round(s, 4) for s in volume.spacing],
            "reference_long_axis_mm": ref["long_axis"], "reference_volume_ml": ref["volume_ml"],
            "model_long_axis_mm": ours["long_axis"], "model_volume_ml": ours["volume_ml"],
            "baseline_long_axis_mm": base["long_axis"], "baseline_volume_ml": base["volume_ml"],
            "keybox_long_axis_mm": keybox["long_axis"], "keybox_volume_ml": keybox["volume_ml"],
            "model_dice_3d": round(dice(pred, truth), 4), "baseline_dice_3d": round(dice(box_3d, truth), 4),
            "keybox_dice_3d": round(dice(key_box, truth), 4),
            "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
        write(args, rows, provenance)


def write(args, rows: list[dict], provenance: dict) -> None:
    def summary(sel: list[dict]) -> dict:
        out = {"cases": len(sel)}
        if not sel:
            return out
        for who in ("model", "baseline", "keybox"):
            la = [abs(r[f"{who}_long_axis_mm"] - r["reference_long_axis_mm"]) for r in sel]
            vol = [abs(r[f"{who}_volume_ml"] - r["reference_volume_ml"]) / r["reference_volume_ml"] for r in sel]
            out[who] = {"median_abs_long_axis_error_mm": round(float(np.median(la)), 2),
                        "median_rel_volume_error": round(float(np.median(vol)), 4),
                        "mean_dice_3d": round(float(np.mean([r[f"{who}_dice_3d"] for r in sel])), 4)
                        if all(f"{who}_dice_3d" in r for r in sel) else None}
        return out

    result = {
        "what": "lesion 1 of the structured report: long axis (mm) and volume (mL) vs the reference mask's",
        "prompt": "tight box of the reference mask on its largest slice, through the segmentation flow "
                  "(tasks/segmentation.segment with propagate: box propagation, or the model's own 3D inference)",
        "baseline": "ellipsoid inscribed in the reference mask's 3D bounding box (knows the true z-extent)",
        "keybox": "no-model ellipsoid from the key-slice box alone (z semi-axis = mean in-plane semi-axis, mm)",
        "model": args.model,
        "masks_from_eval_runs": [Path(p).parent.name for p in args.predictions],
        "targets": {"median_abs_long_axis_error_mm": 2.0, "median_rel_volume_error": 0.10},
        "cases_run": len(rows), "cpu_note": "run on a shared 2-core CPU; --budget-s may stop before all cases",
        "all": summary(rows),
        "deeplesion": summary([r for r in rows if r["dataset"] == "deeplesion"]),
        "sts": summary([r for r in rows if r["dataset"] == "sts"]),
        "held_out": {ds: summary([r for r in rows if r["dataset"] == ds and r["role"] == "held-out"])
                     for ds in ("deeplesion", "sts")},
        "cases": rows,
        # the segmenter (weights sha256, data, arguments, code commit, machine), or with --predictions the
        # evaluation runs' own provenance beside the name of the model they ran
        "provenance": provenance,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("all", "deeplesion", "sts", "held_out")}, indent=1))


if __name__ == "__main__":
    main()
