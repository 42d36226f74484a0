"""3D CT lesion segmentation from one box on the key slice, beside the no-model baseline.

Key slice: the slice where the lesion is largest; the prompt is the tight box of the true mask there; the
mask is propagated through the volume (medfoundry.tasks.volume: box hypotheses chosen by predicted IoU, each
mask gated by the key-slice lesion's intensity range, shape priors on the extent and the cross-sections), beside
the previous defaults (``PREVIOUS_DEFAULTS``: no shape prior), and
for comparison with the single previous box of earlier versions (``box_scales=(1.0,)``) and with every lesion
slice prompted with its own true box (not a method: the upper bound of propagation). Baseline: the ellipsoid
inscribed in the true 3D bounding box. Patients 000009 and 000010 were never used in training;
000001 and 000002 were (reported separately, flagged).

    python benchmarks/seg_lesion3d.py --shared ../shared/data --out benchmarks/results/seg_lesion3d.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medfoundry.eval.baselines import dice, ellipsoid_in_box
from medfoundry.io import read_image
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import TTA_MODES, open_segmenter
from medfoundry.tasks.measure import measure
from medfoundry.tasks.volume import PREVIOUS_DEFAULTS, segment_volume

UNSEEN = ("000009", "000010")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--model", default="medfoundry-sam-lite")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default="benchmarks/results/seg_lesion3d.json")
    ap.add_argument("--propagation-head", action="store_true",
                    help="also propagate with the model's trained head (`train sam-propagation`)")
    ap.add_argument("--tta", default="none", choices=TTA_MODES,
                    help="test-time mirroring of every slice (as `segment --tta`)")
    args = ap.parse_args()
    seg = open_segmenter(args.model, args.weights, tta=args.tta)
    cases = []
    for path in sorted((Path(args.shared) / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")):
        volume = read_image(path, key="imgs")
        truth = read_image(path, key="gts").array > 0
        key = int(truth.sum(axis=(1, 2)).argmax())
        result = segment_volume(seg, volume, key, box=mask_box(truth[key]))
        single = segment_volume(seg, volume, key, box=mask_box(truth[key]), box_scales=(1.0,))
        previous = segment_volume(seg, volume, key, box=mask_box(truth[key]), **PREVIOUS_DEFAULTS)
        oracle = np.zeros_like(truth)  # upper bound of propagation: every lesion slice prompted with its true box
        for z in np.nonzero(truth.any(axis=(1, 2)))[0]:
            seg.set_image(volume.slice(int(z)))
            oracle[z] = seg.predict(boxes=mask_box(truth[z])[None]).best()[0]
        head = segment_volume(seg, volume, key, box=mask_box(truth[key]), use_head=True) if args.propagation_head \
            else None
        m = measure(result.mask, volume)
        patient = path.stem.split("_")[2]
        cases.append({"case": path.stem, "patient": patient, "unseen": patient in UNSEEN, "key_slice": key,
                      "dice_3d": dice(result.mask, truth), "dice_3d_single_box": dice(single.mask, truth),
                      "dice_3d_previous_defaults": dice(previous.mask, truth), "stopped": list(result.stopped),
                      "dice_3d_true_box_every_slice": dice(oracle, truth),
                      **({"dice_3d_propagation_head": dice(head.mask, truth)} if head is not None else {}),
                      "baseline_ellipsoid_dice_3d": dice(ellipsoid_in_box(truth), truth),
                      "slices_true": [int(np.nonzero(truth.any((1, 2)))[0][[0, -1]][i]) for i in (0, 1)],
                      "slices_pred": [result.first, result.last], "volume_ml_pred": m.volume_ml,
                      "volume_ml_true": measure(truth, volume).volume_ml, "long_axis_mm_pred": m.long_axis_mm})
        print(json.dumps(cases[-1]))
    unseen = [c for c in cases if c["unseen"]]
    summary = {
        "benchmark": "DeepLesion CT lesions, box on the key slice only, propagated in 3D",
        "model": seg.record.name,
        "tta": args.tta,
        "unseen_cases": len(unseen),
        "dice_3d_mean_unseen": float(np.mean([c["dice_3d"] for c in unseen])),
        "dice_3d_single_box_mean_unseen": float(np.mean([c["dice_3d_single_box"] for c in unseen])),
        "dice_3d_previous_defaults_mean_unseen (no shape prior)": float(
            np.mean([c["dice_3d_previous_defaults"] for c in unseen])),
        "dice_3d_true_box_every_slice_mean_unseen (not a method: the upper bound of propagation)": float(
            np.mean([c["dice_3d_true_box_every_slice"] for c in unseen])),
        **({"dice_3d_propagation_head_mean_unseen": float(np.mean([c["dice_3d_propagation_head"] for c in unseen]))}
           if args.propagation_head else {}),
        "baseline_ellipsoid_dice_3d_mean_unseen": float(np.mean([c["baseline_ellipsoid_dice_3d"] for c in unseen])),
        "dice_3d_mean_all_including_training_patients": float(np.mean([c["dice_3d"] for c in cases])),
        "cases": cases,
    }
    from medfoundry.eval.provenance import collect  # model, weights sha256, data, arguments, code, machine

    summary["provenance"] = collect(seg, data=Path(args.shared) / "deeplesion_ct_lesion_3d" / "volumes", settings=args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=2))


if __name__ == "__main__":
    main()
