"""The one trainer: for every training command, two gloo processes under torchrun with batch B end with the
parameters of one process with batch 2B, and a run interrupted mid-epoch and resumed ends where an uninterrupted
run ends (tiny data and models)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_runs import run
from PIL import Image
from safetensors.torch import load_file, save_file

from medfoundry.train.trainer import Trainer, TrainerConfig

pytest.importorskip("segment_anything")
pytest.importorskip("open_clip")

CLIP_ARCH = {"image_backbone": "convnext_atto", "image_size": 32, "embed_dim": 16, "output_stride": 32}  # no BatchNorm
SAM_ARCH = {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4, "prompt_crop": 0.25}
OPEN_CLIP_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
                 "quick_gelu": True}
KINDS = ["clip", "clip-lora", "sam", "sam-propagation", "box3d"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _clip_pairs(root: Path) -> Path:
    rng, rows = np.random.default_rng(1), []
    for i in range(20):
        label = "pneumonia" if i % 2 else "normal"
        Image.fromarray(rng.integers(0, 90 if i % 2 else 220, (32, 32), dtype=np.uint8)).save(root / f"c{i}.png")
        for text in [f"a chest x-ray showing {label}"] + ([f"chest film, {label}, case {i}"] if i % 3 == 0 else []):
            rows.append({"image": f"c{i}.png", "text": text, "label": label,
                         "split": "val" if i >= 16 else "train", "source": "toy"})
    return _write_csv(root / "clip_pairs.csv", rows)


def _lora_setup(root: Path) -> tuple[str, Path]:
    """A tiny open_clip folder and 9 pairs (7 training rows: the last global batch of 4 is 3 rows, shared 2 + 1)."""
    import open_clip

    from medfoundry.predict.contrastive import save_open_clip_folder
    from medfoundry.registry import ModelRecord
    from medfoundry.registry.loading import write_checkpoint_record

    torch.manual_seed(0)
    folder = root / "tiny-open-clip"
    save_open_clip_folder(open_clip.model.CLIP(**OPEN_CLIP_CFG), {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {}},
                          folder)
    write_checkpoint_record(ModelRecord.from_dict({
        "name": "tiny-open-clip", "arch": "open_clip", "family": "TPM-contrastive", "tasks": ["embedding"],
        "modalities": ["CR"], "license": "MIT", "commercial_use": True, "paper": "test", "training_data": "none",
        "preprocess": {"image_size": 64, "resize": "shortest_crop", "channels": 3, "intensity": "uint8",
                       "scale": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}}), folder)
    rng, rows = np.random.default_rng(0), []
    for i in range(9):
        Image.fromarray(rng.normal(100 + 60 * (i % 2), 20, (64, 64)).clip(0, 255).astype(np.uint8)).save(
            root / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "text": ["chest x-ray with pneumonia", "normal chest x-ray"][i % 2],
                     "label": ["pneumonia", "normal"][i % 2], "split": "val" if i >= 7 else "train"})
    return f"local-dir:{folder}", _write_csv(root / "lora_pairs.csv", rows)


def _volumes(root: Path) -> tuple[Path, Path]:
    """A 10-slice CT-like NIfTI with two labelled ellipsoids, and initial segmenter weights."""
    import nibabel as nib

    from medfoundry.models.sam import build_sam

    zz, yy, xx = np.mgrid[0:10, 0:64, 0:64]
    labels = np.zeros((10, 64, 64), np.int16)
    labels[(zz - 4) ** 2 * 9 + (yy - 22) ** 2 + (xx - 22) ** 2 <= 12**2] = 1
    labels[(zz - 6) ** 2 * 25 + (yy - 44) ** 2 + (xx - 44) ** 2 <= 11**2] = 2
    ct = np.where(labels > 0, 60.0, -100.0) + np.random.default_rng(0).normal(0, 5, labels.shape)
    for name, arr in (("ct.nii.gz", ct.astype(np.float32)), ("seg.nii.gz", labels)):
        nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), np.diag([1.0, 1.0, 5.0, 1.0])), root / name)
    (root / "volumes.jsonl").write_text(json.dumps({"image": "ct.nii.gz", "mask": "seg.nii.gz", "split": "train"})
                                        + "\n")
    torch.manual_seed(0)
    save_file(build_sam(dict(SAM_ARCH)).state_dict(), str(root / "init.safetensors"))
    return root / "volumes.jsonl", root / "init.safetensors"


def _config(kind: str, data: dict, out: Path, processes: int, **extra) -> dict:
    """One kind's settings for ``processes`` processes: batch 4 // processes each (global batch 4 or 8), the same
    number of steps, 2 epochs of 2 steps."""
    if kind == "clip":
        from medfoundry.train.clip import ClipTrainConfig

        cfg = ClipTrainConfig(pairs=str(data["clip"]), out=str(out), epochs=2, batch_size=8 // processes,
                              warmup_steps=2, device="cpu", amp=False, arch=dict(CLIP_ARCH), **extra)
        cfg.contract["image_size"] = CLIP_ARCH["image_size"]
    elif kind == "clip-lora":
        from medfoundry.train.clip_lora import ClipLoraConfig

        cfg = ClipLoraConfig(model=data["lora_model"], pairs=str(data["lora"]), out=str(out), tower="both",
                             epochs=2, batch_size=4 // processes, lr=1e-2, **extra)
    elif kind == "sam":  # LoRA mode: DDP through the encoder's adapters, the prompt encoder and the decoder
        from medfoundry.train.sam import SamTrainConfig

        cfg = SamTrainConfig(manifest=str(data["sam"]), out=str(out), epochs=2, batch_size=4 // processes,
                             steps_per_epoch=2 * processes, device="cpu", warmup_steps=1, mode="lora",
                             arch=dict(SAM_ARCH), **extra)
    elif kind == "box3d":  # instance norm only: no per-process batch statistics
        from medfoundry.train.box3d import Box3DTrainConfig

        cfg = Box3DTrainConfig(volumes=str(data["volumes"]), out=str(out), epochs=2, steps_per_epoch=2 * processes,
                               batch_size=4 // processes, warmup_steps=1, device="cpu",
                               features=(2, 2, 4, 4, 8, 2), contract={"grid": (16, 32, 32)}, **extra)
    else:
        from medfoundry.train.sam_propagation import PropagationConfig

        cfg = PropagationConfig(volumes=str(data["volumes"]), init=str(data["init"]), out=str(out), epochs=2,
                                steps_per_epoch=2 * processes, batch_size=4 // processes, warmup_steps=1,
                                val_fraction=0.0, device="cpu", arch=dict(SAM_ARCH), **extra)
    return asdict(cfg)


def _cancelled_by_instance_norm(name: str) -> bool:
    """A convolution bias that an instance norm subtracts right away (every BasicUNet block but the output conv)."""
    return name.endswith(".conv.bias") and "final_conv" not in name


def _same_box3d_outputs(a: Path, b: Path) -> None:
    from medfoundry.predict.segment import open_segmenter

    x = torch.rand(1, 2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = (open_segmenter(f"local-dir:{p / 'model'}").model(x) for p in (a, b))
    torch.testing.assert_close(ya, yb, atol=1e-4, rtol=1e-4)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in sorted((out / "model").glob("*.safetensors")):
        weights.update(load_file(str(path)))
    assert weights, f"no weights in {out / 'model'}"
    return weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, disc_manifest_module: Path) -> dict:
    """The data of every kind, and each kind's uninterrupted one-process run with the global batch."""
    root = tmp_path_factory.mktemp("trainer")
    data = {"clip": _clip_pairs(root), "sam": disc_manifest_module}
    data["lora_model"], data["lora"] = _lora_setup(root)
    data["volumes"], data["init"] = _volumes(root)
    for kind in KINDS:
        run(kind, _config(kind, data, root / f"{kind}-one", 1))
    return {"root": root, "data": data}


@pytest.fixture(scope="module")
def disc_manifest_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/conftest.py's disc manifest, once for this module."""
    from medfoundry.train.seg_data import folder_manifest

    root = tmp_path_factory.mktemp("discs")
    (root / "img").mkdir()
    (root / "msk").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(6):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 15)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        Image.fromarray(np.where(disc, 200, 50).astype(np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "msk" / f"{i}.png")
    return folder_manifest(root / "img", root / "msk", root / "m.jsonl", val_fraction=0.34)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_mid_epoch_and_resumed_ends_where_an_uninterrupted_run_ends(runs: dict, kind: str) -> None:
    out = runs["root"] / f"{kind}-cut"
    cfg = _config(kind, runs["data"], out, 1, stop_after_steps=3, checkpoint_every=1)  # 2 steps/epoch: in epoch 2
    run(kind, cfg)
    assert not (out / "model").exists()
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    run(kind, {**cfg, "stop_after_steps": None})
    whole, resumed = _weights(runs["root"] / f"{kind}-one"), _weights(out)
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    history = json.loads((out / "history.json").read_text())
    reference = json.loads((runs["root"] / f"{kind}-one" / "history.json").read_text())
    key = "train_loss" if kind == "clip-lora" else "loss"
    assert [h.get(key) for h in history] == [h.get(key) for h in reference]


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(runs: dict) -> None:
    """One torchrun launch runs the five trainers with 2 gloo processes each."""
    root = runs["root"]
    items = [{"kind": kind, "config": _config(kind, runs["data"], root / f"{kind}-two", 2)} for kind in KINDS]
    (root / "runs.json").write_text(json.dumps(items))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("ddp_runs.py")), str(root / "runs.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("parameters identical on all 2 ranks") == len(KINDS)  # logged by rank 0 only
    for kind in KINDS:
        one, two = _weights(root / f"{kind}-one"), _weights(root / f"{kind}-two")
        assert one.keys() == two.keys()
        for k in one:  # AdamW turns float rounding of near-zero gradients into ~1e-5 parameter differences
            if kind == "box3d" and _cancelled_by_instance_norm(k):
                continue  # its true gradient is 0: AdamW steps on rounding noise (the output is the same, below)
            torch.testing.assert_close(two[k], one[k], atol=1e-4, rtol=1e-4, msg=f"{kind}: {k}")
        if kind == "box3d":
            _same_box3d_outputs(root / f"{kind}-one", root / f"{kind}-two")
        h1 = json.loads((root / f"{kind}-one" / "history.json").read_text())
        h2 = json.loads((root / f"{kind}-two" / "history.json").read_text())
        key = "train_loss" if kind == "clip-lora" else "loss"
        np.testing.assert_allclose([h[key] for h in h2 if h["epoch"]], [h[key] for h in h1 if h["epoch"]],
                                   rtol=1e-4)


def test_one_process_holds_the_whole_global_batch(tmp_path: Path) -> None:
    trainer = Trainer(TrainerConfig(out=tmp_path, device="cpu"))
    assert (trainer.world_size, trainer.rank, trainer.device.type) == (1, 0, "cpu")
    assert trainer.shard(5) == slice(0, 5) and trainer.shard_sizes(5) == [5]
    x = torch.randn(3, 4)
    assert trainer.gather(x) is x and trainer.from_main(2.5) == 2.5


class _NaNOnceTask:
    """A linear model fit on fixed data whose second step's loss is NaN (a bad batch)."""

    loss_key = "loss"
    clock_schedule = False
    epochs, steps_per_epoch = 1, 4

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        pass

    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor:
        loss = module(torch.ones(2, 3)).pow(2).mean()
        return loss * float("nan") if step == 1 else loss

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        return 0.1

    def validate(self, epoch: int) -> dict:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def model_state(self) -> dict:
        return self.model.state_dict()

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state)


def test_a_non_finite_step_is_skipped_and_the_weights_stay_finite(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    trainer = Trainer(TrainerConfig(out=tmp_path, device="cpu", progress=False))
    module, opt = trainer.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    history = trainer.fit(_NaNOnceTask(model), module, opt)
    assert history[-1]["skipped_steps"] == 1 and np.isfinite(history[-1]["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
