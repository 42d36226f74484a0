"""Package a trained segmenter for the wheel: every tensor as float16 in one safetensors file, with its sha256.

    python tools/package_sam.py runs/sam3/model/model.safetensors src/medfoundry/weights/medfoundry-sam-lite
"""

import hashlib
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

src, folder = Path(sys.argv[1]), Path(sys.argv[2])
state = {k: v.half().contiguous() for k, v in load_file(src).items()}
out = folder / "model.safetensors"
save_file(state, str(out), metadata={"format": "pt", "arch": "sam"})
print({"tensors": len(state), "size_mb": round(out.stat().st_size / 2**20, 1),
       "sha256": hashlib.sha256(out.read_bytes()).hexdigest()})
