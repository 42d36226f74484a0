"""Copy a trained captioner (``medfoundry train captioner`` → ``RUN/model``) into the package as float16, with
its training log, and print the sha256 for ``card.json``.

    PYTHONPATH=src python tools/package_captioner.py RUN src/medfoundry/weights/medfoundry-captioner-tiny
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from medfoundry.registry.sources import sha256_file


def main(run: str, dest: str) -> None:
    run_dir, out = Path(run), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run_dir / "model" / "adapter.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(out / "adapter.safetensors"))
    shutil.copy(run_dir / "model" / "config.json", out / "config.json")
    shutil.copy(run_dir / "train_config.json", out / "train_config.json")
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    (out / "history.json").write_text(json.dumps(log) + "\n")
    config = json.loads((out / "train_config.json").read_text())
    config.update(shared="../shared/data", out="runs/captioner")  # no machine paths in the package
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    path = out / "adapter.safetensors"
    print(json.dumps({"sha256": sha256_file(path), "size_mb": round(path.stat().st_size / 2**20, 2)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
