"""Run training configurations one after another in this process group (started by the tests under torchrun):
``python -m torch.distributed.run --nproc_per_node 2 tests/train/ddp_runs.py RUNS.json``, where RUNS.json is a
list of ``{"kind": "clip" | "clip-lora" | "sam" | "sam-propagation" | "box3d", "config": {...}}``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run(kind: str, config: dict) -> Path:
    """Train one configuration (the fields of the trainer's config dataclass); returns the model folder."""
    if kind == "clip":
        from medfoundry.train.clip import ClipTrainConfig, train_clip

        return train_clip(ClipTrainConfig(**config))
    if kind == "clip-lora":
        from medfoundry.train.clip_lora import ClipLoraConfig, finetune_clip_lora

        return finetune_clip_lora(ClipLoraConfig(**config), progress=False)
    if kind == "sam":
        from medfoundry.train.sam import SamTrainConfig, train_sam

        return train_sam(SamTrainConfig(**config))
    if kind == "box3d":
        from medfoundry.train.box3d import Box3DTrainConfig, train_box3d

        return train_box3d(Box3DTrainConfig(**config))
    from medfoundry.train.sam_propagation import PropagationConfig, train_propagation

    return train_propagation(PropagationConfig(**config))


if __name__ == "__main__":
    for item in json.loads(Path(sys.argv[1]).read_text()):
        run(item["kind"], item["config"])
