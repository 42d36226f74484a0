"""The one trainer (train/trainer.py) against the code before it, and against itself under torchrun.

For each training command (clip, clip-lora, sam, sam-propagation), on small synthetic data and models:
1. the per-epoch training losses and final weights of this checkout vs a baseline commit (``git archive`` of its
   ``src/``), same seed, one process: the port must not change what training does;
2. this checkout with 2 gloo processes under torchrun and batch B vs 1 process with batch 2B.

    python benchmarks/trainer_parity.py [--baseline-commit acbe967] [--epochs 3] \
        [--out benchmarks/results/trainer_parity.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAM_ARCH = {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4, "prompt_crop": 0.25}
OPEN_CLIP_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
                 "quick_gelu": True}
# clip-bf16: clip with --cpu-bf16; sam: LoRA mode; sam-full: full training of a BatchNorm encoder (per-rank batch
# statistics under torchrun, so its 2-vs-1-process difference is not rounding)
KINDS = ("clip", "clip-bf16", "clip-lora", "sam", "sam-full", "sam-propagation")

# run in a subprocess with PYTHONPATH=<baseline or this checkout's src>: the same call works for both
RUNNER = """
import json, sys
kind, cfg = sys.argv[1], json.loads(sys.argv[2])
if kind in ("clip", "clip-bf16"):
    from medfoundry.train.clip import ClipTrainConfig as C, train_clip as f
elif kind == "clip-lora":
    from medfoundry.train.clip_lora import ClipLoraConfig as C, finetune_clip_lora as f
elif kind in ("sam", "sam-full"):
    from medfoundry.train.sam import SamTrainConfig as C, train_sam as f
else:
    from medfoundry.train.sam_propagation import PropagationConfig as C, train_propagation as f
f(C(**cfg))
"""


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_data(root: Path) -> dict[str, str]:
    """Synthetic pairs (48 images, two classes), a tiny open_clip folder, 12 disc images with masks, a CT-like
    volume with two ellipsoids and random initial segmenter weights."""
    import nibabel as nib
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from medfoundry.models.sam import build_sam
    from medfoundry.predict.contrastive import save_open_clip_folder
    from medfoundry.registry import ModelRecord
    from medfoundry.registry.loading import write_checkpoint_record
    from medfoundry.train.seg_data import folder_manifest

    rng, rows = np.random.default_rng(0), []
    for i in range(48):
        label = ["normal", "pneumonia"][i % 2]
        img = rng.normal(100 + 60 * (i % 2), 25, (64, 64)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "text": f"a chest x-ray showing {label}", "label": label,
                     "split": "val" if i >= 40 else "train", "source": "toy"})
    pairs = _csv(root / "pairs.csv", rows)
    torch.manual_seed(0)
    folder = root / "tiny-open-clip"
    save_open_clip_folder(open_clip.model.CLIP(**OPEN_CLIP_CFG), {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {}},
                          folder)
    write_checkpoint_record(ModelRecord.from_dict({
        "name": "tiny-open-clip", "arch": "open_clip", "family": "TPM-contrastive", "tasks": ["embedding"],
        "modalities": ["CR"], "license": "MIT", "commercial_use": True, "paper": "benchmark",
        "training_data": "none",
        "preprocess": {"image_size": 64, "resize": "shortest_crop", "channels": 3, "intensity": "uint8",
                       "scale": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}}), folder)
    (root / "img").mkdir()
    (root / "msk").mkdir()
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(12):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 15)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        Image.fromarray(np.where(disc, 200, 50).astype(np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "msk" / f"{i}.png")
    manifest = folder_manifest(root / "img", root / "msk", root / "m.jsonl", val_fraction=0.25)
    zz, yy, xx = np.mgrid[0:10, 0:64, 0:64]
    labels = np.zeros((10, 64, 64), np.int16)
    labels[(zz - 4) ** 2 * 9 + (yy - 22) ** 2 + (xx - 22) ** 2 <= 12**2] = 1
    labels[(zz - 6) ** 2 * 25 + (yy - 44) ** 2 + (xx - 44) ** 2 <= 11**2] = 2
    ct = np.where(labels > 0, 60.0, -100.0) + rng.normal(0, 5, labels.shape)
    for name, arr in (("ct.nii.gz", ct.astype(np.float32)), ("seg.nii.gz", labels)):
        nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), np.diag([1.0, 1.0, 5.0, 1.0])), root / name)
    (root / "volumes.jsonl").write_text(json.dumps({"image": "ct.nii.gz", "mask": "seg.nii.gz"}) + "\n")
    torch.manual_seed(0)
    save_file(build_sam(dict(SAM_ARCH)).state_dict(), str(root / "init.safetensors"))
    return {"pairs": str(pairs), "open_clip": f"local-dir:{folder}", "manifest": str(manifest),
            "volumes": str(root / "volumes.jsonl"), "init": str(root / "init.safetensors")}


def config(kind: str, data: dict[str, str], out: Path, epochs: int, processes: int = 1) -> dict:
    """Settings of one run; ``processes`` splits the global batch (and, as the flags mean, --steps-per-epoch)."""
    if kind in ("clip", "clip-bf16"):
        return {"pairs": data["pairs"], "out": str(out), "epochs": epochs, "batch_size": 8 // processes,
                "warmup_steps": 4, "device": "cpu", "amp": kind == "clip-bf16", "cpu_bf16": kind == "clip-bf16",
                "arch": {
                    "image_backbone": "convnext_atto", "image_size": 32, "embed_dim": 16, "output_stride": 32},
                "contract": {"image_size": 32, "resize": "squash", "channels": 3, "intensity": "window",
                             "scale": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}}
    if kind == "clip-lora":
        return {"model": data["open_clip"], "pairs": data["pairs"], "out": str(out), "tower": "both",
                "epochs": epochs, "batch_size": 8 // processes, "lr": 5e-3}
    if kind in ("sam", "sam-full"):
        return {"manifest": data["manifest"], "out": str(out), "epochs": epochs, "batch_size": 4 // processes,
                "steps_per_epoch": 4 * processes, "device": "cpu", "warmup_steps": 2,
                "mode": "lora" if kind == "sam" else "full",
                "arch": dict(SAM_ARCH)}
    return {"volumes": data["volumes"], "init": data["init"], "out": str(out), "epochs": epochs,
            "steps_per_epoch": 4 * processes, "batch_size": 4 // processes, "warmup_steps": 2, "device": "cpu",
            "arch": dict(SAM_ARCH)}


def train(kind: str, cfg: dict, src: Path, processes: int = 1) -> float:
    """Run one configuration with the code in ``src``; returns the wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    script = Path(cfg["out"]).parent / "runner.py"
    script.write_text(RUNNER)
    t0 = time.time()
    done = subprocess.run([*launcher, str(script), kind, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{kind} with {src} failed:\n{done.stderr[-3000:]}")
    return time.time() - t0


def outcome(out: Path) -> tuple[list[float], dict]:
    """Per-epoch training losses and the final weights of a run folder."""
    from safetensors.torch import load_file

    history = json.loads((out / "history.json").read_text())
    losses = [h.get("loss", h.get("train_loss")) for h in history if h["epoch"]]
    weights: dict = {}
    for path in sorted((out / "model").glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return losses, weights


def max_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main() -> int:
    from medfoundry.eval.provenance import collect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-commit", default="acbe967")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "trainer_parity.json"))
    args = parser.parse_args()
    results: dict = {"benchmark": "trainer_parity", "baseline_commit": args.baseline_commit, "epochs": args.epochs,
                     "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = root / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_commit, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        (root / "data").mkdir()
        data = make_data(root / "data")
        # no registry model: tiny models built from a seed (configs per run below); the synthetic data hashed here
        results["provenance"] = collect(data=root / "data", settings=args)
        for kind in args.kinds.split(","):
            entry: dict = {"config": {k: v for k, v in config(kind, data, root / "x", args.epochs).items()
                                      if k not in ("out", "pairs", "manifest", "volumes", "init", "model")}}
            for name, src, processes in (("baseline", baseline / "src", 1), ("trainer", ROOT / "src", 1),
                                         ("trainer_torchrun_2", ROOT / "src", 2)):
                run_root = root / f"{kind}-{name}"
                run_root.mkdir()
                seconds = train(kind, config(kind, data, run_root / "out", args.epochs, processes), src, processes)
                losses, weights = outcome(run_root / "out")
                entry[name] = {"losses": losses, "seconds": round(seconds, 1), "processes": processes}
                entry[name]["_weights"] = weights
                print(kind, name, losses, flush=True)
            base, new, two = (entry[n].pop("_weights") for n in ("baseline", "trainer", "trainer_torchrun_2"))
            entry["max_weight_difference_trainer_vs_baseline"] = max_difference(base, new)
            entry["max_weight_difference_torchrun_2_vs_1"] = max_difference(new, two)
            entry["max_loss_difference_trainer_vs_baseline"] = float(np.max(np.abs(
                np.subtract(entry["trainer"]["losses"], entry["baseline"]["losses"]))))
            entry["max_loss_difference_torchrun_2_vs_1"] = float(np.max(np.abs(
                np.subtract(entry["trainer_torchrun_2"]["losses"], entry["trainer"]["losses"]))))
            results["runs"][kind] = entry
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: {m: v for m, v in e.items() if m.startswith("max_")} for k, e in results["runs"].items()},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
