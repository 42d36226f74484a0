"""Kill a batch job half-way and resume it: `medfoundry batch embed` over every 2D image of the shared data.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/batch_resume_demo.py --shared ../shared/data --out OUT

The manifest lists every image of the shared data a 2D embedding applies to (Kvasir-SEG frames, MedPix CT/MR,
COVID chest radiographs, the SIIM DICOM radiograph, the middle slice of the DeepLesion, sarcoma and
TotalSegmentator volumes and of the TotalSegmentator DICOM series); it adds one missing path and one corrupt file
(written beside the manifest) and repeats one image, to show the errors table. The job runs on a local Ray
instance with ``--workers``; once ``--kill-at`` of the items are in Parquet shards, the whole process group is
killed (SIGKILL: no clean-up). The same command then runs again with the same ``--out``: it must skip what is
written and finish the rest, so that every item ends up exactly once in results or errors. The finished ``OUT``
is what ``index_bench.py real --batch-out OUT`` indexes. Writes benchmarks/results/batch_resume_demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import medfoundry
from medfoundry.eval.provenance import collect

#: the weights file the `medfoundry` commands this script runs load (the embedded model of this install)
EMBEDDED_CLIP = Path(medfoundry.__file__).parent / "weights" / "medfoundry-clip-tiny" / "model.safetensors"


def shared_images(root: Path) -> list[str]:
    """Every 2D-embeddable image of the shared data (see the module docstring), sorted per folder."""
    paths = sorted((root / "kvasir_seg" / "images").glob("*.jpg"))
    paths += sorted((root / "medpix_ct_mr_captions" / "images").glob("*.jpg"))
    paths += sorted(p for p in (root / "covid_cxr_clinical_notes" / "images").iterdir() if p.is_file())
    paths += sorted((root / "siim_cxr_dicom_sample").glob("*.dcm"))
    paths += sorted((root / "deeplesion_ct_lesion_3d").rglob("*.npz"))
    paths += sorted((root / "sts_ct_sarcoma_3d" / "volumes").glob("*.nii.gz"))
    ts = root / "totalsegmentator_examples"
    paths += sorted(p for p in ts.rglob("*.nii.gz") if "seg" not in p.name.lower() and "label" not in p.name.lower())
    paths += sorted({p.parent for p in ts.rglob("*.dcm")})
    return [str(p.resolve()) for p in paths]


def rows_written(out: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for sub in ("results", "errors") for f in (out / sub).glob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--out", required=True, help="the batch job's output folder (kept: index it afterwards)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of items written before the kill")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (a shorter demo)")
    parser.add_argument("--result", default="benchmarks/results/batch_resume_demo.json")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: give a new --out")
    work = out.parent / f"{out.name}-inputs"
    work.mkdir(parents=True, exist_ok=True)
    (work / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this file was cut short")
    images = shared_images(Path(args.shared))[: args.limit]
    rows = [*images, str(work / "missing.dcm"), str(work / "corrupt.png"), images[0]]
    manifest = work / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(f'"{p}"' for p in rows) + "\n")
    cmd = [sys.executable, "-m", "medfoundry.cli.main", "batch", "embed", "--manifest", str(manifest), "--out",
           str(out), "--workers", str(args.workers), "--num-cpus", str(os.cpu_count()), "--batch-size", "8",
           "--shard-rows", str(max(8, min(100, len(rows) // 20))), "--json"]
    t0 = time.perf_counter()
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    target = int(args.kill_at * len(rows))
    while first.poll() is None and (not (out / "results").is_dir() or rows_written(out) < target):
        time.sleep(1.0)
    killed_after = time.perf_counter() - t0
    if first.poll() is None:
        os.killpg(first.pid, signal.SIGKILL)
    _, err1 = first.communicate()
    at_kill = rows_written(out)
    t1 = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True)
    resumed_s = time.perf_counter() - t1
    if second.returncode:
        raise SystemExit(f"the resumed run failed:\n{second.stderr[-3000:]}")
    summary = json.loads(second.stdout)
    import pyarrow.parquet as pq

    results = pq.read_table(out / "results", columns=["id"]).column("id").to_pylist()
    errors = pq.read_table(out / "errors").to_pylist()
    ids = results + [e["id"] for e in errors]
    result = {
        "benchmark": "batch_resume_demo", "manifest_rows": len(rows), "workers": args.workers,
        "images": "every 2D image of the shared data" if args.limit is None else f"the first {args.limit} of them",
        "first_run": {"killed_after_s": round(killed_after, 1), "signal": "SIGKILL to the process group",
                      "returncode": first.returncode, "rows_in_shards_at_kill": at_kill,
                      "progress_lines": [ln for ln in err1.splitlines() if ln.startswith("batch:")][-5:]},
        "second_run": {**summary, "wall_s": round(resumed_s, 1),
                       "progress_lines": [ln for ln in second.stderr.splitlines() if ln.startswith("batch:")][-5:]},
        "final": {"results": len(results), "errors": len(errors), "distinct_ids": len(set(ids)),
                  "every_item_once": len(ids) == len(set(ids)) == len(rows),
                  "errors_table": [{k: e[k] for k in ("source", "error_type", "error")} for e in errors]},
        "cpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[1].split("\n")[0]
        .strip(),
        "loadavg_end": os.getloadavg(),
        "note": "2-core machine shared by many processes; run under nice -n 10",
        "provenance": collect(name="medfoundry-clip-tiny", weights=EMBEDDED_CLIP, data=[Path(p) for p in rows],
                              settings=args),
    }
    result["second_run"]["out"] = "OUT"  # machine-specific folders out of the committed file
    for e in result["final"]["errors_table"]:
        e["source"] = Path(e["source"]).name
        e["error"] = e["error"].replace(str(work), "<inputs>").replace(str(Path(args.shared).resolve()), "<shared>")
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["final"] | {"at_kill": at_kill, "resumed": summary["processed"]}, indent=1))


if __name__ == "__main__":
    main()
