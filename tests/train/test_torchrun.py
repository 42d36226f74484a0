"""The SAM training loop under torchrun: two CPU processes (gloo) stay in step and write one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_sam_training_under_torchrun_keeps_ranks_in_sync(tmp_path: Path, disc_manifest: Path) -> None:
    pytest.importorskip("segment_anything")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medfoundry.cli.main", "train", "sam", "--manifest", str(disc_manifest), "--out", str(out),
           "--epochs", "2", "--batch-size", "2", "--steps-per-epoch", "4", "--device", "cpu",
           "--max-minutes", "10", "--time-schedule"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("parameters identical on all 2 ranks") == 1  # logged by rank 0 only
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["val_dice"] <= 1 for h in history)
    assert (out / "model" / "model.safetensors").is_file() and (out / "last.pt").is_file()
