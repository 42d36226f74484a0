"""Training the slice-propagation head of a box-crop segmenter (``medfoundry train sam-propagation``).

3D segmentation from one key slice carries the mask to each neighbouring slice in turn. A decoder trained only
on single-slice box prompts fills whatever box it is given, so near an object's end it keeps finding
"something" and it does not shrink with the object. The propagation head is a second prompt encoder + mask
decoder (initialised from the first) that learns exactly this step: input the next slice's crop around the
previous mask, that mask's box and the mask itself (:func:`medfoundry.predict.boxes.previous_mask_prompt`);
target the object on the next slice, **empty where the object has ended**. The image encoder and the first
decoder stay frozen, so 2D prompting is unchanged.

Training pairs come from label-map volumes listed in a JSON-lines manifest (``image``, ``mask``, optional
``image_key``/``mask_key`` for npz, ``labels`` (default: every non-zero value), ``flip_y``, ``split``,
``source``). Pairs are (slice s → slice s ± g) for every g whose distance g × slice spacing stays within
``max_gap_mm``, so thin-slice volumes also teach the larger steps of thick-slice CT. Sources are sampled
equally, except that ``end_fraction`` of the samples are pairs past an object's end (target empty), the rare
case that stops propagation; the source mask is randomly dilated or eroded to mimic the errors that
propagation accumulates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medfoundry.errors import InputContractError
from medfoundry.io import read_image
from medfoundry.io.image import MedImage
from medfoundry.models.sam import SamModel, build_sam
from medfoundry.predict.boxes import crop_box, mask_box, previous_mask_prompt
from medfoundry.train.sam import box_crop_record, dice_loss
from medfoundry.train.seg_data import MIN_AREA, box_crop_contract, training_sample
from medfoundry.train.trainer import SeededSampleTask, Trainer, TrainerConfig
from medfoundry.viz import display_rgb


@dataclass
class PropagationConfig:
    """Settings of one run (saved beside its outputs)."""

    volumes: str
    init: str
    out: str
    epochs: int = 12
    steps_per_epoch: int = 60
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 30
    max_gap_mm: float = 6.0
    margin_range: tuple[float, float] = (0.15, 0.4)
    perturb: float = 0.5
    end_fraction: float = 0.25
    val_fraction: float = 0.15
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    arch: dict[str, Any] = field(default_factory=lambda: {"encoder": "lite", "image_size": 256,
                                                          "backbone": "resnet10t", "embed_stride": 4,
                                                          "prompt_crop": 0.25})
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    #: end this process after that many optimiser steps, writing a resume point there (an interruption)
    stop_after_steps: int | None = None
    #: also write the resume point ``last.pt`` every that many steps inside an epoch (None: at epoch ends only)
    checkpoint_every: int | None = None


@dataclass
class VolumeObject:
    """One object through a volume: display slices (Z, H, W, 3) uint8, its masks (Z, H, W) bool."""

    slices: np.ndarray
    masks: np.ndarray
    max_gap: int
    source: str
    name: str

    def pairs(self) -> list[tuple[int, int]]:
        """(source slice, target slice) pairs: the source holds the object, the target may not."""
        areas = self.masks.sum((1, 2))
        depth = len(areas)
        return [(s, s + d * g) for s in range(depth) if areas[s] >= MIN_AREA for d in (-1, 1)
                for g in range(1, self.max_gap + 1) if 0 <= s + d * g < depth]


def shared_volume_manifest(shared_root: str | Path, out: str | Path) -> Path:
    """The propagation head's volumes from the shared data: the TotalSegmentator example CTs with their label
    maps, and DeepLesion patients 000001 and 000002 (000009 and 000010 stay unseen for the 3D benchmark)."""
    root, out = Path(shared_root).resolve(), Path(out).resolve()
    ts = root / "totalsegmentator_examples"
    rows = [{"image": str(ts / "nifti" / "example_ct_sm.nii.gz"), "mask": str(ts / "nifti" / "example_seg.nii.gz"),
             "source": "ct_organs"},
            {"image": str(ts / "dicom" / "example_ct_dicom"), "mask": str(ts / "nifti" / "example_seg_dicom.nii.gz"),
             "source": "ct_dicom_organs"}]
    for path in sorted((root / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")):
        if path.stem.split("_")[2] in ("000001", "000002"):
            rows.append({"image": str(path), "image_key": "imgs", "mask": str(path), "mask_key": "gts",
                         "source": "deeplesion", "split": "train"})
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["image"], r["mask"] = os.path.relpath(r["image"], out.parent), os.path.relpath(r["mask"], out.parent)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def load_volume_objects(path: str | Path, max_gap_mm: float, val_fraction: float, seed: int
                        ) -> dict[str, list[VolumeObject]]:
    """Read the manifest into objects per split. Rows without ``split`` put ``val_fraction`` of their labels
    (chosen with ``seed``) in validation."""
    rng = random.Random(seed)
    out: dict[str, list[VolumeObject]] = {"train": [], "val": []}
    for row, image, labels in read_label_volumes(path):
        slices = np.stack([display_rgb(image.slice(z)) for z in range(image.array.shape[0])])
        max_gap = max(1, int(max_gap_mm // image.spacing[0]))
        values = row.get("labels") or [int(v) for v in np.unique(labels) if v]
        for value in values:
            masks = labels == value
            if masks.sum((1, 2)).max() < MIN_AREA:
                continue
            split = row.get("split") or ("val" if rng.random() < val_fraction else "train")
            out[split].append(VolumeObject(slices, np.ascontiguousarray(masks), max_gap, row.get("source", ""),
                                           f"{Path(row['image']).name}:{value}"))
    return out


def read_label_volumes(path: str | Path) -> Iterator[tuple[dict, MedImage, np.ndarray]]:
    """Each row of a volumes manifest (JSON lines: ``image``, ``mask``, optional ``image_key``/``mask_key`` for
    npz, ``flip_y``, ``units`` (``"HU"`` for CT files that do not say so), ``labels``, ``split``, ``source``;
    paths relative to the manifest) as (row, image volume, (Z, Y, X) label map on the image's grid).

    Raises:
        InputContractError: a file that is not a volume, or a label map that does not fit its image.
    """
    path = Path(path)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        image = read_image(_resolve(path, row["image"]), key=row.get("image_key"))
        if row.get("units"):
            image = dataclasses.replace(image, units=row["units"], modality="CT" if row["units"] == "HU"
                                        else image.modality)
        labels_img = read_image(_resolve(path, row["mask"]), key=row.get("mask_key"))
        if not image.is_volume or not labels_img.is_volume:
            raise InputContractError(f"{row['image']}: 3D training needs volumes and label-map volumes")
        labels = labels_img.array
        if row.get("flip_y", labels_img.orientation[1] != image.orientation[1]):
            labels = labels[:, ::-1]  # label map written with the other row direction
        if labels.shape != image.array.shape:
            raise InputContractError(f"{row['mask']}: label map {labels.shape} does not match {image.array.shape}")
        yield row, image, np.ascontiguousarray(labels)


def _resolve(manifest: Path, file: str) -> str:
    return file if Path(file).is_absolute() else str(manifest.parent / file)


def _perturb(mask: np.ndarray, rng: random.Random) -> np.ndarray:
    """Dilate or erode by 1–3 pixels (scaled to the object's size), keeping at least MIN_AREA pixels."""
    radius = max(1, round(rng.uniform(0.02, 0.08) * math.sqrt(mask.sum())))
    out = (ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion)(mask, iterations=radius)
    return out if out.sum() >= MIN_AREA else mask


class PropagationDataset(torch.utils.data.Dataset):
    """Slice pairs as (next slice crop (3, S, S), its mask (1, S, S), previous-mask box (4,), mask input)."""

    def __init__(self, objects: list[VolumeObject], cfg: PropagationConfig, length: int, train: bool = True) -> None:
        self.cfg, self.length, self.train = cfg, length, train
        self.size = cfg.arch["image_size"]
        self.grid = self.size // cfg.arch["embed_stride"]
        self.by_source: dict[str, list[tuple[VolumeObject, int, int]]] = {}
        for obj in objects:
            self.by_source.setdefault(obj.source, []).extend((obj, s, t) for s, t in obj.pairs())
        self.flat = [p for pairs in self.by_source.values() for p in pairs]
        self.ends = [(obj, s, t) for obj, s, t in self.flat if not obj.masks[t].any()]
        if not self.flat:
            raise InputContractError("no slice pairs: objects need at least one slice of "
                                     f"{MIN_AREA} pixels and a neighbour")
        self.contract = box_crop_contract(self.size, cfg.mean, cfg.std)  # the record's, as inference applies it

    def __len__(self) -> int:
        return self.length if self.train else len(self.flat)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = random.Random(index)  # training: ``index`` is the sample's seed (drawn for the global batch)
        if self.train and self.ends and rng.random() < self.cfg.end_fraction:
            obj, s, t = rng.choice(self.ends)
        elif self.train:  # sources equally often, then a random pair of that source
            obj, s, t = rng.choice(self.by_source[rng.choice(sorted(self.by_source))])
        else:
            obj, s, t = self.flat[index]
        prev, image, target = obj.masks[s], obj.slices[t], obj.masks[t]
        if self.train and rng.random() < self.cfg.perturb:
            prev = _perturb(prev, rng)
        if self.train and rng.random() < 0.5:
            prev, image, target = prev[:, ::-1], image[:, ::-1], target[:, ::-1]
        h, w = prev.shape
        box = mask_box(prev)
        margin = rng.uniform(*self.cfg.margin_range) if self.train else self.cfg.arch.get("prompt_crop", 0.25)
        window = crop_box(box, margin, h, w)
        item = training_sample(image, target, box, window, self.contract)
        x0, y0, x1, y1 = window
        item["mask_input"] = torch.from_numpy(previous_mask_prompt(prev[y0:y1, x0:x1], 4 * self.grid))
        if self.train:
            item["image"] = item["image"] * rng.uniform(0.85, 1.15) + rng.uniform(-0.2, 0.2)
        return item


def _step(model: SamModel, batch: dict[str, torch.Tensor], device: torch.device
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, boxes, mi = (batch[k].to(device) for k in ("image", "mask", "box", "mask_input"))
    with torch.no_grad():
        emb = model.embed(x)
    logits, iou = model.decode_batch(emb, boxes=boxes, mask_input=mi, head="propagation")
    up = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
    return up, iou, y


def _dice_per_item(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dice per item of boolean (B, 1, H, W) masks; empty prediction of an empty target = 1."""
    inter = (pred & y).sum((1, 2, 3)).float()
    total = (pred.sum((1, 2, 3)) + y.sum((1, 2, 3))).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


@torch.no_grad()
def evaluate_propagation(model: SamModel, objects: list[VolumeObject], cfg: PropagationConfig,
                         device: torch.device) -> dict[str, float]:
    """Mean Dice over every validation pair (fixed margin, no perturbation), and how often an ended object is
    correctly predicted empty."""
    model.eval()
    data = PropagationDataset(objects, cfg, 0, train=False)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size)
    dices, ended = [], []
    for batch in loader:
        up, _, y = _step(model, batch, device)
        pred, truth = up > 0, y > 0.5
        dices.extend(_dice_per_item(pred, truth).tolist())
        empty = ~truth.any((1, 2, 3))
        ended.extend((~pred.any((1, 2, 3)))[empty].tolist())
    return {"val_dice": float(np.mean(dices)), "val_pairs": len(dices),
            "val_ended_predicted_empty": float(np.mean(ended)) if ended else float("nan")}


class PropagationStep(torch.nn.Module):
    """One training step as a module whose ``forward`` DistributedDataParallel wraps: the frozen encoder's
    embedding of this rank's crops, the propagation head's masks; returns BCE + soft Dice + the IoU head's MSE."""

    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor, mask_input: torch.Tensor
                ) -> torch.Tensor:
        with torch.no_grad():
            emb = self.model.embed(x)
        logits, iou = self.model.decode_batch(emb, boxes=boxes, mask_input=mask_input, head="propagation")
        up = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        with torch.no_grad():
            true_iou = _iou_per_item(up > 0, y > 0.5)
        return F.binary_cross_entropy_with_logits(up, y) + dice_loss(up, y) + F.mse_loss(iou.float()[:, 0], true_iou)


class _PropagationTask(SeededSampleTask):
    """:func:`train_propagation`'s task: each rank builds its shard's slice pairs from the seeds."""

    def __init__(self, cfg: PropagationConfig, trainer: Trainer, model: SamModel,
                 objects: dict[str, list[VolumeObject]]) -> None:
        super().__init__(trainer, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
                         lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed)
        self.cfg, self.model, self.val = cfg, model, objects["val"]
        self.dataset = PropagationDataset(objects["train"], cfg, self.steps_per_epoch * self.global_batch)

    def train_mode(self) -> None:
        self.model.eval()  # frozen encoder keeps its BatchNorm statistics; the head has no dropout or norm stats

    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor | None:
        batch = next(self.batches)
        x, y, boxes, mi = (batch[k].to(self.trainer.device) for k in ("image", "mask", "box", "mask_input"))
        return module(x, y, boxes, mi)

    def validate(self, epoch: int) -> dict[str, Any]:
        if not self.val:
            return {}
        return evaluate_propagation(self.model, self.val, self.cfg, self.trainer.device)


def train_propagation(cfg: PropagationConfig, base: Any = None) -> Path:
    """Add and train the propagation head on top of ``cfg.init``; writes ``cfg.out/model`` (all weights).

    ``base`` is the :class:`~medfoundry.registry.records.ModelRecord` of the initial model (from ``--model``):
    its architecture and input contract are kept; without it ``cfg.arch``/``cfg.mean``/``cfg.std`` describe
    the model. ``cfg.batch_size`` is per process (under torchrun each rank computes its shard of the global batch)."""

    from medfoundry.registry.loading import load_state_dict

    if base is not None:
        if base.arch != "sam" or not float(base.arch_config.get("prompt_crop", 0) or 0) > 0:
            raise InputContractError(f"{base.name}: propagation heads are for box-crop segmenters (prompt_crop > 0)")
        cfg.arch = {k: v for k, v in base.arch_config.items() if k != "propagation"}
        cfg.mean, cfg.std = tuple(base.preprocess.mean), tuple(base.preprocess.std)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(TrainerConfig(out=cfg.out, seed=cfg.seed, device=device, max_minutes=cfg.max_minutes,
                                    stop_after_steps=cfg.stop_after_steps, checkpoint_every=cfg.checkpoint_every,
                                    grad_clip=1.0))
    objects = load_volume_objects(cfg.volumes, cfg.max_gap_mm, cfg.val_fraction, cfg.seed)
    trainer.log(f"{len(objects['train'])} training objects, {len(objects['val'])} validation objects")
    model = build_sam({k: v for k, v in cfg.arch.items() if k != "propagation"})
    state = load_state_dict(Path(cfg.init))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("propagation.")})
    model.add_propagation_head()
    if any(k.startswith("propagation.") for k in state):  # continue training an existing head
        model.load_state_dict(state)
    model.to(trainer.device)
    model.requires_grad_(False)
    model.propagation.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    task = _PropagationTask(cfg, trainer, model, objects)
    step_module, opt = trainer.setup(PropagationStep(model), opt)
    history = trainer.fit(task, step_module, opt)
    if trainer.interrupted:
        return trainer.out / "model"
    trainer.check_in_sync(model)
    training = f"{cfg.init} + propagation head trained on {cfg.volumes}"
    if base is not None:
        record = dataclasses.replace(base, arch_config={**cfg.arch, "propagation": True}, training_data=training,
                                     weights=(), embedded=False)
    else:
        record = box_crop_record("sam-propagation", {**cfg.arch, "propagation": True}, cfg.mean, cfg.std, training,
                                 ["CT"])
    return trainer.finish(model.state_dict(), record, history, cfg)


def _iou_per_item(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    inter = (pred & y).sum((1, 2, 3)).float()
    union = (pred | y).sum((1, 2, 3)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
