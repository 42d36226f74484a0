"""What bfloat16 costs or saves on this CPU: the precision probe of ``--precision auto``, run outright.

    OMP_NUM_THREADS=1 python benchmarks/precision_probe.py [--models litemedsam medfoundry-sam-lite]

For each segmenter, :func:`medfoundry.predict.precision.measure_segmenter` times its image encoder in float32 and
in bfloat16 (CPU seconds, best of 3 after a warm-up) and compares the masks decoded from both embeddings; beside
it, what ``--precision auto`` and ``--precision bf16`` resolve to on this machine (without the probe cache). On a
CPU without native bfloat16 the bf16 column is PyTorch's emulation, which is why medfoundry refuses it there.
Appends one entry per run (CPU features recorded) to ``benchmarks/results/precision_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medfoundry.eval.provenance import collect  # noqa: E402
from medfoundry.models.hardware import cpu_features  # noqa: E402
from medfoundry.predict.precision import choose_precision, measure_segmenter  # noqa: E402
from medfoundry.predict.segment import open_segmenter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["litemedsam", "medfoundry-sam-lite"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision_probe.json"))
    args = ap.parse_args()
    features = cpu_features()
    entry = {"cpu": {"model": features.model, "capability": features.capability,
                     "native_bf16": features.native_bf16, "bf16_flags": sorted(features.flags & {
                         "avx512_bf16", "amx_bf16", "bf16"})},
             "threads": torch.get_num_threads(), "torch": torch.__version__, "models": {}}
    for name in args.models:
        seg = open_segmenter(name, None)
        probe = measure_segmenter(seg, repeats=3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forced = choose_precision("bf16", features, lambda p=probe: p)
        auto = choose_precision("auto", features, lambda p=probe: p)
        entry["models"][name] = {
            "fp32_cpu_s": probe.fp32_s, "bf16_cpu_s": probe.bf16_s,
            "bf16_slowdown": round(probe.bf16_s / probe.fp32_s, 2), "probe_mask_iou": probe.iou,
            "auto_resolves_to": auto.precision, "auto_reason": auto.reason,
            "bf16_resolves_to": forced.precision, "bf16_warning": [str(w.message) for w in caught],
            "provenance": collect(seg, settings=args)}
        print(json.dumps({name: {k: v for k, v in entry["models"][name].items() if k != "provenance"}}), flush=True)
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps([*runs, entry], indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
