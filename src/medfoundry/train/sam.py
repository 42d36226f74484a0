"""Promptable-segmentation training (``medfoundry train sam``): SAM-family models on box-crops with simulated
prompts.

Each step samples objects, jitters their ground-truth boxes (MedSAM-style noise), cuts a crop around the box
(for ``prompt_crop`` models; whole images otherwise), and trains on the box prompt; half of the samples get a
second, corrective pass with a click sampled from the error region and the first pass's mask as input
(SAM's interactive training). Loss: BCE + soft Dice on the masks, MSE of the IoU head. Modes: ``full``,
``decoder`` (encoders frozen, MedSAM-style decoder tuning) and ``lora`` (peft adapters on the encoder).
Resumable from ``out/last.pt``; validation Dice each epoch. Runs under ``torchrun`` (gradients averaged over
the ranks, BatchNorm statistics taken from rank 0 each epoch, each rank drawing its own samples; rank 0 logs and
writes the outputs).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.models.sam import SamModel, build_sam
from medfoundry.predict.boxes import crop_box, mask_box
from medfoundry.train.distributed import load_resume_point, save_resume_point, start_run
from medfoundry.train.seg_data import SegSample, box_crop_contract, jitter_box, load_manifest, training_sample


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


def learning_rate(cfg: SamTrainConfig, step: int, total_steps: int, elapsed_s: float) -> float:
    """Linear warm-up, then cosine decay to 0 over ``total_steps``, or over ``max_minutes`` of training time
    (whichever ends first) when ``time_schedule`` is set, so a time-boxed run still anneals."""
    progress = step / total_steps
    if cfg.time_schedule and cfg.max_minutes:
        progress = max(progress, elapsed_s / (cfg.max_minutes * 60))
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class BoxCropDataset(torch.utils.data.Dataset):
    """Random objects as (image (3, S, S) normalised, mask (1, S, S), box (4,) XYXY in input pixels)."""

    def __init__(self, samples: list[SegSample], cfg: SamTrainConfig, length: int, train: bool = True) -> None:
        self.samples, self.cfg, self.length, self.train = samples, cfg, length, train
        self.size = cfg.arch["image_size"]
        self.crop = cfg.arch.get("prompt_crop", 0.0)
        self.contract = box_crop_contract(self.size, cfg.mean, cfg.std)  # the record's, as inference applies it

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = random.Random(index if not self.train else random.getrandbits(32))
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


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter],
                   ctx: Any = None) -> float:
    """Backward, average the gradients over the ranks (under torchrun), clip the gradient norm to 1, step;
    returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if ctx is not None:
        ctx.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())


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


def train_sam(cfg: SamTrainConfig) -> Path:
    """Train and write a self-describing model folder ``cfg.out/model`` (plus history and config)."""
    from medfoundry.registry.loading import load_state_dict

    ctx, out = start_run(cfg.device, cfg.out, cfg.seed)
    data = load_manifest(cfg.manifest, box_crop_contract(cfg.arch["image_size"], cfg.mean, cfg.std))
    train, val = data.get("train", []), data.get("val", [])
    ctx.log(f"{len(train)} training objects, {len(val)} validation objects")
    model = build_sam(dict(cfg.arch)).to(ctx.device)
    if cfg.init:
        model.load_state_dict(load_state_dict(Path(cfg.init)), strict=False)
    _apply_mode(model, cfg.mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # under torchrun each rank draws its own samples and an epoch is shared out between the ranks
    steps = max(1, (cfg.steps_per_epoch or max(1, len(train) // cfg.batch_size)) // ctx.world_size)
    total = steps * cfg.epochs
    ckpt = out / "last.pt"
    start_epoch, history = load_resume_point(ckpt, model, opt)
    if start_epoch:
        ctx.log(f"resumed from {ckpt} at epoch {start_epoch}")
    random.seed(cfg.seed + 1000 * ctx.rank)
    loader = torch.utils.data.DataLoader(
        BoxCropDataset(train, cfg, steps * cfg.batch_size), batch_size=cfg.batch_size, num_workers=cfg.workers,
        drop_last=True, persistent_workers=cfg.workers > 0,
        worker_init_fn=lambda w: random.seed(cfg.seed * 100 + w + 1000 * ctx.rank + time.time_ns() % 1000))
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * ctx.rank)
    use_amp = ctx.device.type == "cuda"
    started = time.time() - sum(e["seconds"] for e in history)  # a resumed run keeps its time budget
    best = -1.0
    frozen_encoder = cfg.mode != "full"
    for epoch in range(start_epoch, cfg.epochs):
        model.train()  # evaluate() leaves the model in eval mode
        if frozen_encoder:  # a frozen encoder keeps its BatchNorm statistics too
            model.image_encoder.eval()
        t0, losses = time.time(), []
        for s, batch in enumerate(loader):
            step = epoch * steps + s
            lr = learning_rate(cfg, step, total, time.time() - started)
            if cfg.time_schedule:  # rank 0's clock for every rank
                lr = ctx.from_main(lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y, boxes = (batch[k].to(ctx.device, non_blocking=True) for k in ("image", "mask", "box"))
            if cfg.pool_mix:  # one embedding grid per step, so the same weights serve every --embed-pool
                model.set_embed_pool(cfg.pool_mix[step % len(cfg.pool_mix)])
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                if frozen_encoder and cfg.mode == "decoder":
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
                half = x.shape[0] // 2
                if half:  # corrective click on half the batch, with the first mask as input
                    pts = _click_from_error(up[:half].detach(), y[:half], gen)
                    logits2, _ = _decode_batch(model, emb[:half], boxes[:half], points=pts,
                                               masks=logits[:half].detach())
                    up2 = F.interpolate(logits2.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
                    loss = loss + 0.5 * (F.binary_cross_entropy_with_logits(up2, y[:half]) + dice_loss(up2, y[:half]))
            losses.append(optimizer_step(opt, loss, params, ctx))
        ctx.sync_buffers(model)
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1)}
        if val:
            if cfg.pool_mix:
                model.set_embed_pool(cfg.pool_mix[0])
            entry["val_dice"] = evaluate(model, val, cfg, ctx.device)  # at the first pool of pool_mix
            for pool in cfg.pool_mix[1:]:
                model.set_embed_pool(pool)
                entry[f"val_dice_pool{pool}"] = evaluate(model, val, cfg, ctx.device)
            if cfg.pool_mix:
                model.set_embed_pool(cfg.pool_mix[0])
        history.append(entry)
        ctx.log(json.dumps(entry))
        if ctx.is_main:
            save_resume_point(ckpt, model.state_dict(), opt, epoch + 1, history)
        if val and entry["val_dice"] > best:
            best = entry["val_dice"]
        if cfg.max_minutes is not None and ctx.from_main((time.time() - started) / 60) > cfg.max_minutes:
            ctx.log(f"stopping after {epoch + 1} epochs: time budget of {cfg.max_minutes} min reached")
            break
    ctx.check_in_sync(model)
    if cfg.mode == "lora":
        merge_lora(model)
    record = box_crop_record("medfoundry-sam-lite", dict(cfg.arch), cfg.mean, cfg.std, f"manifest {cfg.manifest}",
                             ["CT", "endoscopy"])
    return finish_run(out, model.state_dict(), record, history, cfg, ctx)


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


def finish_run(out: Path, state: dict[str, torch.Tensor], record: Any, history: list[dict], cfg: Any,
               ctx: Any = None) -> Path:
    """Write the model folder ``out/model`` (weights + record), ``history.json`` and ``train_config.json``
    (under torchrun: rank 0 writes, every rank returns once it is written)."""
    from medfoundry.registry.loading import save_checkpoint

    folder = out / "model"
    if ctx is None or ctx.is_main:
        folder = save_checkpoint(state, record, folder, overwrite=True)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    if ctx is not None:
        ctx.barrier()
    return folder
