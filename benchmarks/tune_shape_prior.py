"""How the shape priors of 3D propagation were chosen: replayed on the tuning patients only.

Reads the full trajectories that ``benchmarks/record_propagation.py`` recorded (DeepLesion 000001/000002 and the
12 ``tune`` patients of sts_ct_sarcoma_3d; never a reporting patient). Each stop rule only truncates a
trajectory and the ellipsoid cut only post-processes it, so every setting of ``max_extent``, ``min_fraction``
and ``ellipsoid_scale`` (:func:`medfoundry.tasks.volume.segment_volume`) replays exactly, with no model call.
Reported per setting: mean 3D Dice on each dataset and the median relative volume error; per patient the
previous defaults, the chosen ones, and for reference the same masks cut to the true slice range and the
no-model ellipsoid inscribed in the true 3D box.

    nice -n 10 python benchmarks/record_propagation.py --out runs/shape_traj
    nice -n 10 python benchmarks/tune_shape_prior.py --traj runs/shape_traj \\
        --out benchmarks/results/tune_shape_prior.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from medfoundry.eval.baselines import dice, ellipsoid_in_box
from medfoundry.eval.provenance import collect
from medfoundry.predict.boxes import mask_box
from medfoundry.tasks.volume import ELLIPSOID_SCALE, MAX_EXTENT, MIN_FRACTION, half_ellipsoids


def replay(d: dict, max_extent: float | None, min_fraction: float | None, scale: float | None,
           extent: tuple[int, int] | None = None) -> np.ndarray:
    """The mask segment_volume returns with these settings (its growth and intensity rules as defaults)."""
    pred, values, key = d["pred"], d["values"].astype(np.float64), int(d["key"])
    dz, dy, dx = d["spacing"]
    first = pred[key]
    mu, sd = values[key][first].mean(), values[key][first].std() + 1e-6
    reach = np.inf if max_extent is None else max_extent * np.sqrt(first.sum() * dy * dx / np.pi) / dz
    least = 0 if min_fraction is None else min_fraction * first.sum()
    lo = hi = key
    for step in (1, -1):
        prev, z = first, key + step
        while extent is None and 0 <= z < pred.shape[0] and abs(z - key) <= reach:
            m = pred[z]
            if m.sum() < max(8, least) or m.sum() > 1.6 * prev.sum() or abs(values[z][m].mean() - mu) / sd > 2.0:
                break
            lo, hi, prev, z = min(lo, z), max(hi, z), m, z + step
    if extent is not None:
        lo, hi = extent
    out = np.zeros_like(pred)
    out[lo:hi + 1] = pred[lo:hi + 1]
    if scale is not None:
        out &= half_ellipsoids(out.shape, key, mask_box(d["truth"][key]), lo, hi, scale, pad=1.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traj", default="runs/shape_traj")
    ap.add_argument("--out", default="benchmarks/results/tune_shape_prior.json")
    args = ap.parse_args()
    data = {p.stem: dict(np.load(p)) for p in sorted(Path(args.traj).glob("*.npz"))}
    recorded = Path(args.traj) / "provenance.json"
    dataset = {p: "sts" if p.startswith("STS") else "deeplesion" for p in data}

    def score(masks: dict[str, np.ndarray]) -> dict:
        dices = {p: dice(m, data[p]["truth"]) for p, m in masks.items()}
        vol = [abs(int(m.sum()) - int(data[p]["truth"].sum())) / data[p]["truth"].sum() for p, m in masks.items()]
        return {**{f"dice_3d_mean_{ds}": float(np.mean([v for p, v in dices.items() if dataset[p] == ds]))
                   for ds in ("deeplesion", "sts")}, "median_rel_volume_error": float(np.median(vol)),
                "per_patient": {p: round(v, 4) for p, v in dices.items()}}

    grid = []
    for k, f, s in itertools.product((None, 1.5, 1.75, 2.0, 2.5), (None, 0.1, 0.2), (None, 1.0, 1.1, 1.2)):
        row = score({p: replay(d, k, f, s) for p, d in data.items()})
        grid.append({"max_extent": k, "min_fraction": f, "ellipsoid_scale": s, **row})
        print(json.dumps({k_: v for k_, v in grid[-1].items() if k_ != "per_patient"}), flush=True)
    chosen = (MAX_EXTENT, MIN_FRACTION, ELLIPSOID_SCALE)
    truth_range = {p: tuple(int(i) for i in np.nonzero(d["truth"].any(axis=(1, 2)))[0][[0, -1]])
                   for p, d in data.items()}
    summary = {
        "what": "3D Dice of shape-prior settings replayed on recorded propagation trajectories, tuning patients only",
        "model": "medfoundry-sam-lite", "patients": {p: dataset[p] for p in data},
        "previous_defaults (no shape prior)": score({p: replay(d, None, None, None) for p, d in data.items()}),
        "chosen_defaults": {"max_extent": chosen[0], "min_fraction": chosen[1], "ellipsoid_scale": chosen[2],
                            **score({p: replay(d, *chosen) for p, d in data.items()})},
        "reference: chosen cut, true slice range (not a method)": score(
            {p: replay(d, None, None, chosen[2], truth_range[p]) for p, d in data.items()}),
        "reference: ellipsoid inscribed in the true 3D box (not a method)": score(
            {p: ellipsoid_in_box(d["truth"]) for p, d in data.items()}),
        "grid": sorted(grid, key=lambda r: -(r["dice_3d_mean_deeplesion"] + r["dice_3d_mean_sts"])),
        # the model ran in record_propagation.py (its provenance.json, beside the trajectories); the replay runs none
        "provenance": {"recording": json.loads(recorded.read_text())["provenance"] if recorded.is_file() else None,
                       "replay": collect(data=sorted(Path(args.traj).glob("*.npz")), settings=args)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "grid"}, indent=1))


if __name__ == "__main__":
    main()
