"""3D CT soft-tissue sarcoma segmentation from one box on the key slice, beside the no-model baseline.

Data: ``sts_ct_sarcoma_3d`` (20 patients, NIfTI CT in HU, GTV masks; the key slice is the data's
``cases.csv`` one, the largest tumour area). The patients are split once by
:func:`medfoundry.eval.prepare.sts_split` (sorted ids shuffled with seed 0): 12 ``tune`` patients chose the
propagation defaults of :func:`medfoundry.tasks.volume.segment_volume`, 8 ``report`` patients were never
used to choose anything; the summary is on ``--split`` (default ``report``). The volumes are read as HU
(their NIfTI files do not say so), so that models see the soft-tissue CT window as for a DICOM series.

Per patient: Dice of the propagated mask; of every tumour slice prompted with its own true box (not a method:
the upper bound of box propagation); and of the ellipsoid inscribed in the true 3D bounding box (the no-model
baseline, which knows the true extent in z). ``--compare-previous`` also runs the propagation without the
shape priors (``PREVIOUS_DEFAULTS``: the intensity-gated propagation measured before) on the same volumes.

    nice -n 10 python benchmarks/seg_sts3d.py --shared ../shared/data --out benchmarks/results/seg_sts3d.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfoundry.datasets.splits import sts_split
from medfoundry.eval.baselines import dice, ellipsoid_in_box
from medfoundry.eval.provenance import collect
from medfoundry.io import read_image
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import open_segmenter
from medfoundry.tasks.measure import measure
from medfoundry.tasks.volume import PREVIOUS_DEFAULTS, segment_volume


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--model", default="medfoundry-sam-lite")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--split", default="report", choices=["report", "tune", "all"])
    ap.add_argument("--patients", default="", help="comma-separated patient ids within --split (default: all)")
    ap.add_argument("--compare-previous", action="store_true", help="also run the previous propagation defaults")
    ap.add_argument("--no-upper-bound", action="store_true", help="skip the true box on every slice (saves time)")
    ap.add_argument("--out", default="benchmarks/results/seg_sts3d.json")
    args = ap.parse_args()
    root = Path(args.shared) / "sts_ct_sarcoma_3d"
    with open(root / "cases.csv", newline="", encoding="utf-8") as fh:
        records = sorted(csv.DictReader(fh), key=lambda r: r["patient_id"])
    split = sts_split([r["patient_id"] for r in records])
    seg = open_segmenter(args.model, args.weights)
    cases, files = [], [root / "cases.csv"]
    for r in records:
        if (args.split != "all" and split[r["patient_id"]] != args.split) or \
                (args.patients and r["patient_id"] not in args.patients.split(",")):
            continue
        start = time.perf_counter()
        files += [root / r["volume_file"], root / r["mask_file"]]
        volume = replace(read_image(root / r["volume_file"]), units="HU", modality="CT")
        truth = read_image(root / r["mask_file"]).array > 0
        key = int(r["key_slice"])
        box = mask_box(truth[key])
        result = segment_volume(seg, volume, key, box=box)
        seconds = time.perf_counter() - start
        case = {"patient": r["patient_id"], "split": split[r["patient_id"]], "key_slice": key,
                "dice_3d": dice(result.mask, truth), "seconds": seconds,
                "baseline_ellipsoid_dice_3d": dice(ellipsoid_in_box(truth), truth)}
        if args.compare_previous:
            case["dice_3d_previous_defaults"] = dice(segment_volume(seg, volume, key, box=box,
                                                                    **PREVIOUS_DEFAULTS).mask, truth)
        if not args.no_upper_bound:
            oracle = np.zeros_like(truth)  # every tumour slice prompted with its own true box
            for z in np.nonzero(truth.any(axis=(1, 2)))[0]:
                seg.set_image(volume.slice(int(z)))
                oracle[z] = seg.predict(boxes=mask_box(truth[z])[None]).best()[0]
            case["dice_3d_true_box_every_slice"] = dice(oracle, truth)
        z = np.nonzero(truth.any(axis=(1, 2)))[0]
        case.update({"slices_true": [int(z[0]), int(z[-1])], "slices_pred": [result.first, result.last],
                     "stopped": list(result.stopped), "volume_ml_pred": measure(result.mask, volume).volume_ml,
                     "volume_ml_true": measure(truth, volume).volume_ml})
        cases.append(case)
        print(json.dumps(case), flush=True)

    def mean(name: str) -> float | None:
        values = [c[name] for c in cases if name in c]
        return float(np.mean(values)) if values else None

    summary = {
        "benchmark": "STS CT sarcomas, box on the key slice only, propagated in 3D",
        "model": seg.record.name,
        "split": args.split,
        "cases": len(cases),
        "dice_3d_mean": mean("dice_3d"),
        "dice_3d_previous_defaults_mean": mean("dice_3d_previous_defaults"),
        "dice_3d_true_box_every_slice_mean (not a method: the upper bound of propagation)": mean(
            "dice_3d_true_box_every_slice"),
        "baseline_ellipsoid_dice_3d_mean": mean("baseline_ellipsoid_dice_3d"),
        "seconds_per_volume_mean": mean("seconds"),
        "per_patient": cases,
        "provenance": collect(seg, data=files, settings=args),  # the CPU of seconds_per_volume: its machine
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_patient"}, indent=2))


if __name__ == "__main__":
    main()
