"""Package a finished `medfoundry train box3d` run as the embedded medfoundry-box3d-tiny model (float32
safetensors + card.json + history.json). The model card (MODEL_CARD.md) is written by hand from the benchmarks.

    python tools/package_box3d.py runs/box3d-v3 3      # run folder, version
"""

import hashlib
import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

run = Path(sys.argv[1])
dest = Path(__file__).resolve().parents[1] / "src" / "medfoundry" / "weights" / "medfoundry-box3d-tiny"
dest.mkdir(parents=True, exist_ok=True)
record = json.loads((run / "model" / "medfoundry.json").read_text())
state = {k: v.float().contiguous() for k, v in load_file(str(run / "model" / "model.safetensors")).items()}
out = dest / "model.safetensors"
save_file(state, str(out), metadata={"format": "pt", "arch": "box3d"})
sha = hashlib.sha256(out.read_bytes()).hexdigest()
config = json.loads((run / "train_config.json").read_text())
rows = [json.loads(line) for line in (run / "volumes.jsonl").read_text().splitlines() if line.strip()]
sts_train = sum(r["source"] == "sts" and r.get("split", "train") == "train" for r in rows)
sts_val = sum(r["source"] == "sts" and r.get("split") == "val" for r in rows)
sts_use = f"{sts_train} trained, {sts_val} validated" if sts_val else f"all {sts_train} trained (the final fit)"
# test-time mirroring on: mean 3D Dice 0.738 vs 0.725 without (v2; v1 0.700 vs 0.681), on the 2 validation
# patients (tune split) only; v2 (border padding) was chosen over v1 (reflection) on the same patients
record["arch_config"]["contract"]["flips"] = True
# threshold 0.7: predicted / true volume 1.03 and 0.97 on the 2 validation patients (1.18 and 1.14 at 0.5), mean
# Dice 0.740 (0.738 at 0.5); chosen there only, because volumes are what the structured report states
record["arch_config"]["contract"]["threshold"] = 0.7
record.update({
    "name": "medfoundry-box3d-tiny",
    "aliases": ["box3d"],
    "organs": ["limbs", "abdomen", "chest"],
    "license": "research-only (inherits DeepLesion terms; STS CT CC BY 3.0; TotalSegmentator examples Apache-2.0)",
    "license_note": "weights trained on the IBSI soft-tissue-sarcoma CT crops (CC BY 3.0, TCIA Soft-tissue-Sarcoma), "
                    "DeepLesion sub-volumes (NIH, research use with citation) and the TotalSegmentator example CTs "
                    "with their label maps (Apache-2.0 carrying repo); code Apache-2.0",
    "paper": "medfoundry embedded model: a key-slice box prompt drawn into a 3D patch, MONAI BasicUNet "
             "(the 3D counterpart of MedSAM's box prompt)",
    "training_data": f"sts_ct_sarcoma_3d tune patients ({sts_use}; the 8 report patients never seen), "
                     "DeepLesion patients 000001 and 000002 (000009 and 000010 never seen), 59 organs of the two "
                     "TotalSegmentator example CTs",
    "embedded": True,
    "version": sys.argv[2] if len(sys.argv) > 2 else "1",
    "weights": [{"uri": "package:weights/medfoundry-box3d-tiny/model.safetensors", "format": "safetensors",
                 "sha256": sha, "size_mb": round(out.stat().st_size / 2**20, 1)}],
})
(dest / "card.json").write_text(json.dumps(record, indent=2) + "\n")
(dest / "history.json").write_text((run / "history.json").read_text())
(dest / "train_config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("volumes", "out")},
                                                   indent=2) + "\n")
print({"tensors": len(state), "size_mb": round(out.stat().st_size / 2**20, 2), "sha256": sha})
