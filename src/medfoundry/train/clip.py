"""Contrastive training of a :class:`DualEncoder` on image–text pairs (``medfoundry train clip``).

Loss: symmetric InfoNCE (CLIP). With ``label_weight > 0`` the targets are softened MedCLIP-style: pairs whose
rows share a label (or an identical caption) count as partial positives, so captions of the same finding in
one batch are not pushed apart. The text tower is frozen (its pooled features are computed once); the image
tower, both projections and the temperature are trained. Deterministic for a seed; resumable from
``out/last.pt``; runs under ``torchrun`` (DistributedDataParallel) when ``WORLD_SIZE`` is set.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError
from medfoundry.io import read_image
from medfoundry.models.clip import DualEncoderConfig, build_dual_encoder
from medfoundry.predict.preprocess import preprocess
from medfoundry.registry.records import ModelRecord, Preprocess
from medfoundry.train.distributed import load_resume_point, save_resume_point, start_run


@dataclass
class ClipTrainConfig:
    """Settings of one training run (saved beside its outputs)."""

    pairs: str
    out: str
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    label_weight: float = 0.5
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    arch: dict[str, Any] = field(default_factory=lambda: {"image_backbone": "resnet18", "image_size": 192,
                                                          "embed_dim": 256})
    contract: dict[str, Any] = field(default_factory=lambda: {
        "image_size": 192, "resize": "squash", "channels": 3, "intensity": "window", "scale": 1.0,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"})
    eval_templates: list[str] = field(default_factory=lambda: ["a chest x-ray showing {}", "{}"])
    max_rows: int | None = None


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """Rows of a pairs CSV (``image``, ``text`` required; ``label``, ``split``, ``source``, ``group`` optional).
    Relative image paths are taken relative to the CSV's folder."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputContractError(f"{path} has no rows")
    missing = {"image", "text"} - set(rows[0])
    if missing:
        raise InputContractError(f"{path} lacks columns {sorted(missing)}")
    for r in rows:
        if not Path(r["image"]).is_absolute():
            r["image"] = str(path.parent / r["image"])
        r.setdefault("split", "train")
        r.setdefault("label", "")
        r.setdefault("source", "pairs")
    return rows


def _load_images(rows: list[dict[str, str]], contract: Preprocess) -> torch.Tensor:
    """Preprocess every image once: (N, C, S, S) float16 (augmentations are applied on these tensors)."""
    from rich.progress import track

    out = torch.empty((len(rows), contract.channels, contract.image_size, contract.image_size), dtype=torch.float16)
    for i, r in enumerate(track(rows, description="loading images")):
        image = read_image(r["image"])
        if image.is_volume:
            image = image.slice(image.array.shape[0] // 2)
        out[i] = preprocess(image, contract)[0].half()
    return out


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random scale/shift (±10 %), small rotation and contrast/brightness jitter on a normalised batch."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) - 0.5) * math.radians(20)
    scale = 1 + (torch.rand(b, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(b, 2, generator=generator) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.3
    bias = (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.3
    return x * gain.to(x.device, x.dtype) + bias.to(x.device, x.dtype)


def soft_targets(labels: list[str], texts: list[str], weight: float) -> torch.Tensor:
    """(B, B) row-stochastic targets: identity, blended with same-label / same-caption partners."""
    b = len(labels)
    eye = torch.eye(b)
    if weight <= 0:
        return eye
    same = torch.tensor([[float((la and la == lb) or ta == tb) for lb, tb in zip(labels, texts, strict=True)]
                         for la, ta in zip(labels, texts, strict=True)])
    return (1 - weight) * eye + weight * same / same.sum(1, keepdim=True)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy between similarity logits and (soft) targets."""
    logits = scale * img @ txt.t()
    t = targets.to(logits.device)
    return 0.5 * (-(t * logits.log_softmax(1)).sum(1).mean() - (t.t() * logits.t().log_softmax(1)).sum(1).mean())


def zero_shot_auroc(model: Any, images: torch.Tensor, labels: list[str], text_feats: dict[str, torch.Tensor],
                    templates: list[str], device: torch.device) -> float:
    """Binary/multi-class zero-shot AUROC (macro one-vs-rest) of a frozen-text DualEncoder on preloaded images."""
    from sklearn.metrics import roc_auc_score

    classes = sorted(set(labels))
    with torch.no_grad():
        protos = []
        for c in classes:
            feats = torch.stack([text_feats[t.format(c)] for t in templates]).to(device)
            protos.append(F.normalize(F.normalize(model.text_proj(feats), dim=-1).mean(0), dim=-1))
        proto = torch.stack(protos)
        embs = torch.cat([model.encode_image(images[i : i + 256].to(device).float())
                          for i in range(0, len(images), 256)])
        probs = (100 * embs @ proto.t()).softmax(-1).cpu().numpy()
    y = np.array([classes.index(lab) for lab in labels])
    if len(classes) == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr"))


def train_clip(cfg: ClipTrainConfig) -> Path:
    """Train, evaluate each epoch, checkpoint, and write a self-describing model folder to ``cfg.out/model``."""
    from medfoundry.models.text import MiniLMTextEncoder, minilm_tokenizer
    from medfoundry.registry.loading import save_checkpoint

    ctx, out = start_run(cfg.device, cfg.out, cfg.seed)
    rows = read_pairs(cfg.pairs)[: cfg.max_rows]
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val" and r["label"]]
    contract = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.contract.items()})
    arch = DualEncoderConfig(**cfg.arch)
    if arch.image_size != contract.image_size:
        raise InputContractError("arch image_size and contract image_size differ")
    images = _load_images(train_rows, contract)
    val_images = _load_images(val_rows, contract) if val_rows else None

    # frozen text tower: pooled MiniLM features of every caption and evaluation prompt, computed once
    text = MiniLMTextEncoder().load_pretrained().eval()
    tokenize = minilm_tokenizer(arch.max_text_tokens)
    val_classes = sorted({r["label"] for r in val_rows})
    prompts = [t.format(c) for c in val_classes for t in cfg.eval_templates]
    unique = sorted({r["text"] for r in train_rows} | set(prompts))
    feats = {}
    with torch.no_grad():
        for i in range(0, len(unique), 128):
            ids, mask = tokenize(unique[i : i + 128])
            for t, f in zip(unique[i : i + 128], text(ids, mask), strict=True):
                feats[t] = f
    del text

    model = build_dual_encoder(asdict(arch), pretrained_text=False).to(ctx.device)
    model.text = None  # not needed during training: its features are cached above
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_rows) // (cfg.batch_size * ctx.world_size))
    total = steps_per_epoch * cfg.epochs

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)))

    ckpt = out / "last.pt"
    start_epoch, history = load_resume_point(ckpt, model, opt, strict=False)
    if start_epoch:
        ctx.log(f"resumed from {ckpt} at epoch {start_epoch}")
    net = ctx.wrap(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    labels = [r["label"] for r in train_rows]
    texts = [r["text"] for r in train_rows]
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(train_rows), generator=gen).tolist()
        order = order[ctx.rank :: ctx.world_size]
        model.train()
        t0, losses = time.time(), []
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x = augment(images[idx].float(), gen).to(ctx.device)
            tf = torch.stack([feats[texts[i]] for i in idx]).to(ctx.device)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                img = F.normalize(net.module.encode_image(x) if hasattr(net, "module") else net.encode_image(x), dim=-1)
                txt = F.normalize(model.text_proj(tf), dim=-1)
                loss = clip_loss(img.float(), txt.float(), model.logit_scale.exp().clamp(max=100),
                                 soft_targets([labels[i] for i in idx], [texts[i] for i in idx], cfg.label_weight))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None, "seconds": time.time() - t0}
        if val_images is not None and ctx.is_main:
            model.eval()
            for source in sorted({r["source"] for r in val_rows}):
                sel = [i for i, r in enumerate(val_rows) if r["source"] == source]
                labs = [val_rows[i]["label"] for i in sel]
                if len(set(labs)) > 1:
                    entry[f"val_auroc_{source}"] = zero_shot_auroc(model, val_images[sel], labs, feats,
                                                                   cfg.eval_templates, ctx.device)
        history.append(entry)
        ctx.log(json.dumps(entry))
        if ctx.is_main:
            save_resume_point(ckpt, model.trainable_state_dict(), opt, epoch + 1, history)
    ctx.barrier()
    if not ctx.is_main:
        return out / "model"
    record = ModelRecord.from_dict({
        "name": "medfoundry-clip-tiny", "arch": "medfoundry_clip", "arch_config": asdict(arch),
        "family": "TPM-contrastive", "tasks": ["zero-shot-classification", "retrieval", "embedding", "grounding",
                                               "linear-probe"],
        "modalities": ["CR", "DX", "CT", "endoscopy"], "license": "see MODEL_CARD.md", "commercial_use": False,
        "paper": "medfoundry", "training_data": f"pairs from {cfg.pairs}", "templates": cfg.eval_templates,
        "preprocess": cfg.contract,
    })
    folder = save_checkpoint(model.trainable_state_dict(), record, out / "model", overwrite=True)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return folder
