"""Training Box3DNet (``medfoundry train box3d``): a key-slice box → the object in 3D.

Objects come from label-map volumes listed in a JSON-lines manifest (the format of
:func:`medfoundry.train.sam_propagation.read_label_volumes`: ``image``, ``mask``, optional ``image_key``/
``mask_key``, ``units``, ``labels``, ``split``, ``source``). Every sample is built through the predictor's own
contract (:mod:`medfoundry.predict.box3d`), so training sees exactly what inference sees:

- a key slice drawn among the object's slices whose area is at least ``key_fraction`` of its largest one;
- that slice's tight box, each edge moved by up to ``box_jitter`` × the box's side;
- the patch around it, widened or narrowed by up to ``context_jitter``; the volume's ends cut by up to
  ``max_truncate`` slices each (so that the distance from an object's end to the end of a scan, constant in
  cropped data sets, is no cue);
- flips of every axis and in-plane transposition, a random linear change, gamma and noise on the intensities;
- target: the object's mask sampled on the same patch (trilinear, soft).

Loss: binary cross-entropy + soft Dice per sample. Sources are drawn with ``source_weights`` (objects uniformly
within a source). Validation: the 3D Dice of :meth:`Box3DSegmenter.segment_3d` on each validation object from
the tight box of its largest slice (what the ``sts-3d``/``lesion-3d`` benchmarks do), beside the no-model
ellipsoid inscribed in the true 3D box.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.io.image import MedImage
from medfoundry.models.box3d import Box3DConfig, Box3DNet
from medfoundry.predict.box3d import Box3DContract, Box3DSegmenter, normalised, patch_input, sample
from medfoundry.predict.boxes import mask_box
from medfoundry.registry.records import ModelRecord, Preprocess
from medfoundry.tasks.shapes import dice, ellipsoid_in_box
from medfoundry.train.sam_propagation import read_label_volumes
from medfoundry.train.trainer import SeededSampleTask, Trainer, TrainerConfig

#: objects smaller than this many voxels, or on fewer than 2 slices, are not trained on
MIN_VOXELS = 200


@dataclass
class Box3DTrainConfig:
    """Settings of one run (saved beside its outputs)."""

    volumes: str
    out: str
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    key_fraction: float = 0.6
    box_jitter: float = 0.08
    context_jitter: float = 0.15
    max_truncate: int = 8
    source_weights: dict[str, float] = field(default_factory=lambda: {"sts": 0.5, "deeplesion": 0.2,
                                                                      "ct_organs": 0.15, "ct_dicom_organs": 0.15})
    features: tuple[int, ...] = (8, 16, 32, 64, 128, 8)
    contract: dict[str, Any] = field(default_factory=dict)
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    stop_after_steps: int | None = None
    checkpoint_every: int | None = None


@dataclass
class LabelledObject:
    """One object: its volume's normalised intensities (Z, Y, X) float32, its mask (Z, Y, X) bool, the volume."""

    values: np.ndarray
    mask: np.ndarray
    volume: MedImage
    source: str
    name: str

    @property
    def key_slices(self) -> np.ndarray:
        return np.nonzero(self.mask.sum((1, 2)) > 0)[0]


def shared_box3d_manifest(shared_root: str | Path, out: str | Path, val_patients: int = 2) -> Path:
    """The training volumes from the shared data: the ``tune`` STS patients (the last ``val_patients`` of them,
    in sorted order, validate), DeepLesion 000001/000002, and the TotalSegmentator example CTs with their organ
    label maps. The STS ``report`` patients and DeepLesion 000009/000010 are never listed (they are what the
    ``sts-3d`` and ``lesion-3d`` benchmarks report)."""
    import csv

    from medfoundry.datasets.splits import sts_split
    from medfoundry.train.sam_propagation import shared_volume_manifest

    root, out = Path(shared_root).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    shared_volume_manifest(root, out)  # TotalSegmentator organs and DeepLesion 000001/000002
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for r in rows:
        r["image"], r["mask"] = str(out.parent / r["image"]), str(out.parent / r["mask"])
        r["split"] = "train"
        if r["source"] != "deeplesion":
            r["units"] = "HU"
    sts = root / "sts_ct_sarcoma_3d"
    with open(sts / "cases.csv", newline="", encoding="utf-8") as fh:
        cases = sorted(csv.DictReader(fh), key=lambda c: c["patient_id"])
    split = sts_split([c["patient_id"] for c in cases])
    tune = [c for c in cases if split[c["patient_id"]] == "tune"]
    for i, c in enumerate(tune):
        rows.append({"image": str(sts / c["volume_file"]), "mask": str(sts / c["mask_file"]), "units": "HU",
                     "source": "sts", "split": "val" if i >= len(tune) - val_patients else "train",
                     "name": c["patient_id"]})
    for r in rows:
        r["image"], r["mask"] = os.path.relpath(r["image"], out.parent), os.path.relpath(r["mask"], out.parent)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def load_objects(path: str | Path, contract: Box3DContract) -> dict[str, list[LabelledObject]]:
    """The manifest's objects per split (``train`` / ``val``; rows without ``split`` train)."""
    out: dict[str, list[LabelledObject]] = {"train": [], "val": []}
    for row, image, labels in read_label_volumes(path):
        values = normalised(image, contract)
        for value in row.get("labels") or [int(v) for v in np.unique(labels) if v]:
            mask = labels == value
            if mask.sum() < MIN_VOXELS or (mask.sum((1, 2)) > 0).sum() < 2:
                continue
            name = row.get("name") or f"{Path(row['image']).name}:{value}"
            out[row.get("split", "train")].append(LabelledObject(values, mask, image, row.get("source", ""), name))
    return out


def training_example(obj: LabelledObject, contract: Box3DContract, cfg: Box3DTrainConfig, rng: random.Random
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented sample (see the module docstring): input (2, D, H, W) and soft target (D, H, W)."""
    areas = obj.mask.sum((1, 2))
    keys = np.nonzero(areas >= cfg.key_fraction * areas.max())[0]
    key = int(rng.choice(list(keys)))
    depth = len(areas)
    lo = rng.randint(0, max(0, min(cfg.max_truncate, key - 1))) if rng.random() < 0.5 else 0
    hi = depth - (rng.randint(0, max(0, min(cfg.max_truncate, depth - key - 2))) if rng.random() < 0.5 else 0)
    values, mask = obj.values[lo:hi], obj.mask[lo:hi]
    key -= lo
    box = mask_box(mask[key]).astype(np.float64)
    side = box[2:] - box[:2]
    box = box + np.concatenate([side, side]) * np.array([rng.uniform(-cfg.box_jitter, cfg.box_jitter)
                                                         for _ in range(4)])
    height, width = mask.shape[1:]
    box = np.clip(box, 0, [width, height, width, height])
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        box = mask_box(mask[key]).astype(np.float64)
    scale = rng.uniform(1 - cfg.context_jitter, 1 + cfg.context_jitter)
    shape = tuple(mask.shape)
    x, coords = patch_input(values, shape, obj.volume.spacing, key, box, contract, scale)  # type: ignore[arg-type]
    y = sample(mask.astype(np.float32), coords, padding=contract.padding)
    dims = [d for d, flip in ((1, rng.random() < 0.5), (2, rng.random() < 0.5), (3, rng.random() < 0.5)) if flip]
    if dims:
        x, y = x.flip(dims), y.flip([d - 1 for d in dims])
    if rng.random() < 0.5:
        x, y = x.transpose(2, 3), y.transpose(1, 2)
    g = torch.Generator().manual_seed(rng.getrandbits(31))
    intensity = x[0] * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    intensity = intensity.clamp(0, 1) ** math.exp(rng.uniform(-0.3, 0.3))
    intensity = intensity + torch.randn(intensity.shape, generator=g) * rng.uniform(0.0, 0.04)
    x = torch.stack([intensity.clamp(0, 1), x[1]])
    return x.contiguous(), y.contiguous()


def box3d_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (mean over samples) of (B, 1, D, H, W) logits and (B, D, H, W) targets."""
    logits = logits[:, 0].float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    soft_dice = (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


class _Samples(torch.utils.data.Dataset):
    """Samples drawn by seed: the seed picks the source, the object and every augmentation."""

    def __init__(self, objects: list[LabelledObject], contract: Box3DContract, cfg: Box3DTrainConfig) -> None:
        self.by_source: dict[str, list[LabelledObject]] = {}
        for obj in objects:
            self.by_source.setdefault(obj.source, []).append(obj)
        self.sources = sorted(self.by_source)
        self.weights = [cfg.source_weights.get(s, 0.1) for s in self.sources]
        self.contract, self.cfg = contract, cfg

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, seed: int) -> dict[str, torch.Tensor]:
        rng = random.Random(seed)
        source = rng.choices(self.sources, weights=self.weights)[0]
        obj = rng.choice(self.by_source[source])
        x, y = training_example(obj, self.contract, self.cfg, rng)
        return {"x": x, "y": y}


class _Step(torch.nn.Module):
    def __init__(self, model: Box3DNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return box3d_loss(self.model(x), y)


def validate_objects(segmenter: Box3DSegmenter, objects: list[LabelledObject]) -> dict[str, Any]:
    """3D Dice from the tight box of each object's largest slice, beside the ellipsoid in its true 3D box."""
    if not objects:
        return {}
    per = {}
    for obj in objects:
        key = int(obj.mask.sum((1, 2)).argmax())
        pred = segmenter.segment_3d(obj.volume, key, mask_box(obj.mask[key]))
        per[obj.name] = {"dice_3d": round(dice(pred, obj.mask), 4),
                         "ellipsoid_dice_3d": round(dice(ellipsoid_in_box(obj.mask), obj.mask), 4)}
    return {"val_dice_3d": float(np.mean([v["dice_3d"] for v in per.values()])),
            "val_ellipsoid_dice_3d": float(np.mean([v["ellipsoid_dice_3d"] for v in per.values()])),
            "val_per_object": per}


class _Box3DTask(SeededSampleTask):
    """:func:`train_box3d`'s task: each rank builds its shard's augmented patches from the seeds."""

    def __init__(self, cfg: Box3DTrainConfig, trainer: Trainer, model: Box3DNet, record: ModelRecord,
                 objects: dict[str, list[LabelledObject]], contract: Box3DContract) -> None:
        super().__init__(trainer, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
                         lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed)
        self.cfg, self.model, self.record, self.val = cfg, model, record, objects["val"]
        self.dataset = _Samples(objects["train"], contract, cfg)

    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor | None:
        batch = next(self.batches)
        return module(batch["x"].to(self.trainer.device), batch["y"].to(self.trainer.device))

    def validate(self, epoch: int) -> dict[str, Any]:
        if not self.val:
            return {}
        segmenter = Box3DSegmenter(self.model, self.record, str(self.trainer.device))
        out = validate_objects(segmenter, self.val)
        self.model.train()
        return out


def box3d_record(name: str, cfg: Box3DTrainConfig, contract: Box3DContract, training_data: str) -> ModelRecord:
    """The record of a trained Box3DNet (architecture, contract; no weights source: the folder holds them)."""
    contract_dict = {"context": contract.context, "depth_context": contract.depth_context,
                     "hu_window": list(contract.hu_window), "percentiles": list(contract.percentiles),
                     "threshold": contract.threshold, "flips": contract.flips, "padding": contract.padding}
    return ModelRecord(
        name=name, arch="box3d", family="VPM-adaptation", tasks=("segmentation-3d",), modalities=("CT",),
        license="research-only (inherits its training data's terms)", commercial_use=False,
        paper="medfoundry embedded model: a 3D U-Net (MONAI BasicUNet) prompted by one key-slice box",
        training_data=training_data,
        description="Key-slice box → 3D object mask in one pass: a patch resampled around the box (context and "
                    "depth from the box's size), intensities and the box as two channels, MONAI BasicUNet.",
        preprocess=Preprocess(image_size=contract.grid[-1], resize="squash", channels=1, intensity="window",
                              scale=1.0, mean=(0.0,), std=(1.0,), interpolation="bilinear"),
        arch_config={"features": list(cfg.features), "grid": list(contract.grid), "contract": contract_dict})


def train_box3d(cfg: Box3DTrainConfig) -> Path:
    """Train a Box3DNet on ``cfg.volumes``; writes ``cfg.out/model`` (weights + record), history and config."""
    contract = Box3DContract(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.contract.items()})
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(TrainerConfig(out=cfg.out, seed=cfg.seed, device=device, bf16=cfg.bf16,
                                    max_minutes=cfg.max_minutes, stop_after_steps=cfg.stop_after_steps,
                                    checkpoint_every=cfg.checkpoint_every, grad_clip=1.0))
    objects = load_objects(cfg.volumes, contract)
    by_source: dict[str, int] = {}
    for obj in objects["train"]:
        by_source[obj.source] = by_source.get(obj.source, 0) + 1
    trainer.log(f"training objects {by_source}, validation objects {[o.name for o in objects['val']]}")
    model = Box3DNet(Box3DConfig(features=tuple(cfg.features), grid=contract.grid))  # type: ignore[arg-type]
    training = f"{cfg.volumes}: " + ", ".join(f"{n} {s} objects" for s, n in sorted(by_source.items()))
    record = box3d_record("box3d", cfg, contract, training)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    task = _Box3DTask(cfg, trainer, model, record, objects, contract)
    step_module, opt = trainer.setup(_Step(model), opt)
    history = trainer.fit(task, step_module, opt)
    if trainer.interrupted:
        return trainer.out / "model"
    trainer.check_in_sync(model)
    return trainer.finish(model.state_dict(), record, history, cfg)
