"""Copy the files a segmentation manifest names into one folder, with the manifest rewritten to point there.

For a device machine, which sees only the repository: pack into an ignored folder and carry it.

    medfoundry train sam-manifest --shared ../shared/data --out runs/sam-data/manifest.jsonl
    python tools/pack_manifest.py runs/sam-data/manifest.jsonl .device-data/sam [--splits train,val]

Files are copied byte for byte (same bytes, same training data); each keeps its last two path parts as name.
"""

import json
import shutil
import sys
from pathlib import Path

manifest, out = Path(sys.argv[1]), Path(sys.argv[2])
splits = set(sys.argv[sys.argv.index("--splits") + 1].split(",")) if "--splits" in sys.argv else None
out.mkdir(parents=True, exist_ok=True)
rows, copied = [], {}
for line in manifest.read_text().splitlines():
    row = json.loads(line)
    if splits and row.get("split", "train") not in splits:
        continue
    for key in ("image", "mask"):
        src = (manifest.parent / row[key]).resolve()
        if src not in copied:
            name = f"{src.parent.name}/{src.name}"
            (out / src.parent.name).mkdir(exist_ok=True)
            shutil.copyfile(src, out / name)
            copied[src] = name
        row[key] = copied[src]
    rows.append(row)
(out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
size = sum((out / n).stat().st_size for n in copied.values())
print({"rows": len(rows), "files": len(copied), "megabytes": round(size / 1e6, 1)})
