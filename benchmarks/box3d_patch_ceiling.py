"""How much the box3d patch grid itself loses: the reference mask sent through the patch and back, no model.

    OMP_NUM_THREADS=1 python benchmarks/box3d_patch_ceiling.py [--shared ../shared/data]

medfoundry-box3d-tiny sees a 32 × 64 × 64 patch resampled around the key-slice box (in-plane 1.6 × the box's
longer side) and its logits go back to the volume's voxels by trilinear interpolation
(:mod:`medfoundry.predict.box3d`). Is that grid what limits its 3D Dice and the structured report's long axis?
For every DeepLesion sub-volume and sarcoma crop (the cases of ``structured_report_3d.py``, the same key-slice
box), the reference mask is sampled onto the patch exactly as training targets are (soft, trilinear), turned into
logits, mapped back with the predictor's own ``logits_to_volume`` and thresholded at 0.5: a perfect model's output
at that grid. Its 3D Dice and long-axis error against the reference are the ceiling the grid allows; the same is
measured for two finer grids. Writes ``benchmarks/results/box3d_patch_ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from structured_report_3d import cases, lesion1  # noqa: E402

from medfoundry.eval.baselines import dice  # noqa: E402
from medfoundry.eval.provenance import collect  # noqa: E402
from medfoundry.predict import box3d  # noqa: E402
from medfoundry.predict.boxes import mask_box  # noqa: E402
from medfoundry.registry.catalog import get_record  # noqa: E402

GRIDS = ((32, 64, 64), (32, 96, 96), (48, 96, 96))


def round_trip(truth: np.ndarray, spacing: tuple[float, ...], key: int, box: np.ndarray,
               contract: box3d.Box3DContract) -> np.ndarray:
    """The reference mask sampled onto the patch (soft) and mapped back to the volume's voxels, > 0.5."""
    coords = box3d.patch_coordinates(truth.shape, spacing, key, box, contract)
    soft = box3d.sample(truth.astype(np.float32), coords, padding=contract.padding)
    logits = torch.logit(soft.clamp(1e-4, 1 - 1e-4))
    return box3d.logits_to_volume(logits, truth.shape, spacing, key, box, contract) > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "box3d_patch_ceiling.json"))
    args = ap.parse_args()
    shipped = box3d.Box3DContract.from_record(get_record("medfoundry-box3d-tiny"))
    rows = []
    for dataset, name, _role, volume, truth in cases(Path(args.shared), 20):
        key = int(truth.sum(axis=(1, 2)).argmax())
        box = mask_box(truth[key])
        reference = lesion1(truth, volume)["long_axis"]
        row = {"dataset": dataset, "case": name, "reference_long_axis_mm": reference}
        for grid in GRIDS:
            back = round_trip(truth, volume.spacing, key, box, replace(shipped, grid=grid))
            row["x".join(map(str, grid))] = {"dice_3d": round(dice(back, truth), 4),
                                              "long_axis_error_mm": round(lesion1(back, volume)["long_axis"]
                                                                          - reference, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for grid in ("x".join(map(str, g)) for g in GRIDS):
        for dataset in ("deeplesion", "sts"):
            sel = [r[grid] for r in rows if r["dataset"] == dataset]
            summary[f"{grid} {dataset}"] = {
                "cases": len(sel), "mean_dice_3d": round(float(np.mean([s["dice_3d"] for s in sel])), 4),
                "median_abs_long_axis_error_mm": round(float(np.median([abs(s["long_axis_error_mm"])
                                                                         for s in sel])), 2)}
    result = {"what": "reference mask → box3d patch grid → volume (no model): the ceiling the grid allows",
              "shipped_grid": list(shipped.grid), "summary": summary, "cases": rows,
              "provenance": collect(None, name="medfoundry-box3d-tiny (contract only)",
                                    data=[Path(args.shared) / "deeplesion_ct_lesion_3d" / "volumes",
                                          Path(args.shared) / "sts_ct_sarcoma_3d" / "cases.csv"], settings=args)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
