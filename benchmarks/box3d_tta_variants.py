"""Test-time variants of medfoundry-box3d-tiny, chosen on the tuning patients only.

    OMP_NUM_THREADS=1 python benchmarks/box3d_tta_variants.py [--shared ../shared/data] [--model NAME]

Variants, all on top of the shipped mirroring (five mirrored passes per patch):

- ``base``: the shipped inference (one patch around the key-slice box);
- ``scale3``: also the patch 0.85× and 1.15× as wide (training jitters the context by ±15 %), logits averaged
  where the patches overlap;
- ``sec``: also a second prompt on each side, on the slice a third of the way from the key slice to the first
  pass's end, with the box of the first pass's mask there (only where that mask is at least 30 % of the key
  slice's area);
- ``sec_scale``: both.

The prompt is the tight box of the reference mask on its largest slice (as ``structured_report_3d.py``). Per case:
3D Dice, long-axis error (mm) and relative volume error of the structured report's lesion 1. Summaries are
split into the patients the model was trained/tuned on (where a variant may be chosen) and the held-out ones
(reported only). Writes ``benchmarks/results/box3d_tta_variants.json``.
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
from medfoundry.predict.segment import open_segmenter  # noqa: E402

VARIANTS = ("base", "scale3", "sec", "sec_scale")


@torch.inference_mode()
def logits_at(seg, volume, key: int, box: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(Z, Y, X) logits of one mirrored pass with the patch ``scale`` × as wide (``-inf`` outside it)."""
    contract = replace(seg.contract, context=seg.contract.context * scale,
                       depth_context=seg.contract.depth_context * scale)
    shape = tuple(volume.array.shape[:3])
    x, _ = box3d.patch_input(box3d.normalised(volume, contract), shape, volume.spacing, key, box, contract)
    out = seg.model(torch.stack([x.flip(d) for d in box3d.FLIPS]))[:, 0].float()
    logits = torch.stack([o.flip([d - 1 for d in dims]) for o, dims in zip(out, box3d.FLIPS, strict=True)]).mean(0)
    return box3d.logits_to_volume(logits, shape, volume.spacing, key, box, contract)


def mean_where_defined(stack: list[np.ndarray]) -> np.ndarray:
    """Voxel-wise mean of the logits that are finite there (``-inf`` where none is)."""
    a = np.stack(stack)
    finite = np.isfinite(a)
    n = finite.sum(0)
    return np.where(n > 0, np.where(finite, a, 0).sum(0) / np.maximum(n, 1), -np.inf)


def variants(seg, volume, key: int, box: np.ndarray) -> dict[str, np.ndarray]:
    threshold = np.log(seg.contract.threshold / (1 - seg.contract.threshold))

    def mask(logits: np.ndarray) -> np.ndarray:
        return box3d.keep_prompted_part(logits > threshold, key, box)

    first = logits_at(seg, volume, key, box)
    base = mask(first)
    scaled = [first] + [logits_at(seg, volume, key, box, s) for s in (0.85, 1.15)]
    zs = np.nonzero(base.any(axis=(1, 2)))[0]
    second = []
    for end in (zs.min(), zs.max()):
        z = round(float(key + (end - key) / 3))
        if z != key and base[z].sum() > 0.3 * base[key].sum():
            second.append(logits_at(seg, volume, z, mask_box(base[z])))
    return {"base": base, "scale3": mask(mean_where_defined(scaled)), "sec": mask(mean_where_defined([first, *second])),
            "sec_scale": mask(mean_where_defined(scaled + second))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default="medfoundry-box3d-tiny")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "box3d_tta_variants.json"))
    args = ap.parse_args()
    seg = open_segmenter(args.model, None)
    rows = []
    for dataset, name, role, volume, truth in cases(Path(args.shared), 20):
        key = int(truth.sum(axis=(1, 2)).argmax())
        reference = lesion1(truth, volume)
        row = {"dataset": dataset, "case": name, "role": role}
        for variant, pred in variants(seg, volume, key, mask_box(truth[key])).items():
            ours = lesion1(pred, volume)
            row[variant] = {"dice_3d": round(dice(pred, truth), 4),
                            "long_axis_error_mm": round(ours["long_axis"] - reference["long_axis"], 1),
                            "rel_volume_error": round(ours["volume_ml"] / reference["volume_ml"] - 1, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for group in ("tuned/trained on", "held-out"):
        for dataset in ("deeplesion", "sts"):
            sel = [r for r in rows if r["dataset"] == dataset and (r["role"] == "held-out") == (group == "held-out")]
            summary[f"{group} {dataset} ({len(sel)})"] = {v: {
                "mean_dice_3d": round(float(np.mean([r[v]["dice_3d"] for r in sel])), 4),
                "median_abs_long_axis_error_mm": round(float(np.median([abs(r[v]["long_axis_error_mm"])
                                                                         for r in sel])), 2),
                "median_abs_rel_volume_error": round(float(np.median([abs(r[v]["rel_volume_error"])
                                                                       for r in sel])), 4)} for v in VARIANTS}
    result = {"what": "test-time variants of the box3d segmenter (see the script's docstring)",
              "choice_rule": "a variant replaces base only if it is better on the tuned/trained-on patients",
              "summary": summary, "cases": rows,
              "provenance": collect(seg, data=[Path(args.shared) / "deeplesion_ct_lesion_3d" / "volumes",
                                               Path(args.shared) / "sts_ct_sarcoma_3d" / "cases.csv"],
                                    settings=args)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
