"""Contrastive training of a :class:`DualEncoder` on image–text pairs (``medfoundry train clip``).

Loss: symmetric InfoNCE (CLIP). With ``label_weight > 0`` the targets are softened MedCLIP-style: pairs whose
rows share a label (or an identical caption) count as partial positives, so captions of the same finding in
one batch are not pushed apart. The text tower is frozen (its pooled features are computed once); the image
tower, both projections and the temperature are trained. Deterministic for a seed; resumable from
``out/last.pt`` (also mid-epoch); runs under ``torchrun`` (DistributedDataParallel) when ``WORLD_SIZE`` is set.
The loop itself is :class:`medfoundry.train.trainer.Trainer`'s.
"""

from __future__ import annotations

import csv
import math
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
from medfoundry.train.trainer import Trainer, TrainerConfig


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
    #: :func:`augment_params` strength: ``light`` (version 2) or ``strong``
    augment: str = "light"
    #: attribute heads made of text, trained beside the contrastive loss with weight ``attribute_weight``: per task
    #: ``{"name": "plane", "part": 1, "classes": {"axial": ["axial image", ...], ...}, "source_values":
    #: {"kvasir": "endoscopy"}}``; a sample's class is ``source_values[source]`` or word ``part`` of its label
    #: (samples without a class in ``classes`` are left out of that task). Its class prototype is the mean of
    #: its prompts' projected text features, so training sharpens exactly what zero-shot classification uses.
    train_attributes: list[dict[str, Any]] = field(default_factory=list)
    attribute_weight: float = 0.0
    #: start from these weights (a checkpoint file or model folder of the same architecture) instead of random
    init_weights: str | None = None
    arch: dict[str, Any] = field(default_factory=lambda: {"image_backbone": "resnet18", "image_size": 192,
                                                          "embed_dim": 256})
    contract: dict[str, Any] = field(default_factory=lambda: {
        "image_size": 192, "resize": "squash", "channels": 3, "intensity": "window", "scale": 1.0,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"})
    eval_templates: list[str] = field(default_factory=lambda: ["a chest x-ray showing {}", "{}"])
    max_rows: int | None = None
    #: per-source sampling rate per epoch (e.g. {"medpix": 2.0, "pneumoniamnist": 0.5}); absent sources: 1.0
    source_repeat: dict[str, float] = field(default_factory=dict)
    #: bfloat16 autocast on the CPU too (worth it only where the CPU has native bfloat16: AVX512-BF16 / AMX)
    cpu_bf16: bool = False
    #: extra validation each epoch: zero-shot AUROC on one word of a source's labels (label.split()[part]),
    #: each class scored by its prompt, e.g. MedPix modality {"source": "medpix", "part": 0, "prompts": {...}}
    val_attributes: list[dict[str, Any]] = field(default_factory=list)
    #: end this process after that many optimiser steps, writing a resume point at that step first (an
    #: interruption, as a killed job has after its last checkpoint: the next run resumes at that step and ends
    #: where an uninterrupted run ends)
    stop_after_steps: int | None = None
    #: also write the resume point ``last.pt`` every that many steps inside an epoch (None: at epoch ends only)
    checkpoint_every: int | None = None


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


def augment_params(batch: int, generator: torch.Generator, strength: str = "light") -> dict[str, torch.Tensor]:
    """Random parameters of :func:`augment` for ``batch`` samples (drawn for the global batch on every rank, so
    a sample is augmented the same way whatever the number of processes).

    ``light``: scale and shift ±10 %, rotation ±10°, contrast/brightness ±15 % (version 2's recipe).
    ``strong`` adds what separates anatomy from how one archive frames and renders its images: zoom in up to
    1.6× (cuts burned-in text and watermarks at the borders), left–right flips (p 0.5), up–down flips (p 0.1),
    gamma 0.6–1.6, and a lower resolution (p 0.3; 1/4–1/1.5 of the side, as small or upsampled files have).
    """
    params = {"angle": (torch.rand(batch, generator=generator) - 0.5) * math.radians(20),
              "scale": 1 + (torch.rand(batch, generator=generator) - 0.5) * 0.2,
              "shift": (torch.rand(batch, 2, generator=generator) - 0.5) * 0.2,
              "gain": 1 + (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 0.3,
              "bias": (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 0.3}
    if strength == "strong":
        params["scale"] = torch.exp(torch.empty(batch).uniform_(math.log(0.9), math.log(1.6), generator=generator))
        params["flip_x"] = torch.rand(batch, generator=generator) < 0.5
        params["flip_y"] = torch.rand(batch, generator=generator) < 0.1
        params["gamma"] = torch.exp(torch.empty(batch, 1, 1, 1).uniform_(math.log(0.6), math.log(1.6),
                                                                         generator=generator))
        low = torch.rand(batch, generator=generator) < 0.3
        params["resolution"] = torch.where(low, torch.empty(batch).uniform_(0.25, 0.67, generator=generator),
                                           torch.ones(batch))
    elif strength != "light":
        raise InputContractError(f"augmentation strength must be 'light' or 'strong', not {strength!r}")
    return params


def augment(x: torch.Tensor, params: dict[str, torch.Tensor], mean: float = 0.5, std: float = 0.25
            ) -> torch.Tensor:
    """Apply :func:`augment_params`' draws (one row per sample) to a normalised (B, C, S, S) batch: affine warp
    (scale, rotation, shift, flips), then, for ``strong`` draws, gamma on the [0, 1] intensities (``mean``/``std``
    of the contract's normalisation) and a lower resolution; then contrast/brightness jitter."""
    angle, scale, shift = params["angle"], params["scale"], params["shift"]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    fx = 1 - 2 * params["flip_x"].float() if "flip_x" in params else torch.ones_like(angle)
    fy = 1 - 2 * params["flip_y"].float() if "flip_y" in params else torch.ones_like(angle)
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, shift[:, 0]], 1),
                         torch.stack([sin * fx, cos * fy, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    if "gamma" in params:
        unit = (x * std + mean).clamp(0, 1) ** params["gamma"].to(x.device, x.dtype)
        x = (unit - mean) / std
    if "resolution" in params:
        size = x.shape[-1]
        for i in torch.nonzero(params["resolution"] < 1).flatten().tolist():
            small = max(8, round(size * float(params["resolution"][i])))
            down = F.interpolate(x[i : i + 1], size=(small, small), mode="area")
            x[i : i + 1] = F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)
    return x * params["gain"].to(x.device, x.dtype) + params["bias"].to(x.device, x.dtype)


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


class ContrastiveStep(torch.nn.Module):
    """What one training step runs, as a module whose ``forward`` DistributedDataParallel can wrap: images and
    cached text-tower features in, unit image and text embeddings and the logit scale out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, text_features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = F.normalize(self.model.encode_image(images), dim=-1)
        txt = F.normalize(self.model.text_proj(text_features), dim=-1)
        return img, txt, self.model.logit_scale.exp().clamp(max=100)


def attribute_targets(rows: list[dict[str, str]], task: dict[str, Any]) -> torch.Tensor:
    """(N,) class index of each row for one :attr:`ClipTrainConfig.train_attributes` task; −1 where none."""
    classes = list(task["classes"])
    out = []
    for r in rows:
        value = task.get("source_values", {}).get(r.get("source", ""))
        if value is None:
            words = (r.get("label") or "").split()
            value = words[task["part"]] if len(words) > task["part"] else None
        out.append(classes.index(value) if value in classes else -1)
    return torch.tensor(out, dtype=torch.long)


def attribute_loss(img: torch.Tensor, prompt_txt: torch.Tensor, scale: torch.Tensor,
                   tasks: list[dict[str, Any]], targets: list[torch.Tensor], global_valid: list[int],
                   world_size: int) -> torch.Tensor:
    """Cross-entropy of this rank's (B, D) unit image embeddings against each task's class prototypes (the mean
    of its prompts' unit text embeddings, ``prompt_txt`` in the order of the tasks' prompts), summed over valid
    samples and divided by the global batch's valid count (× world size, since DDP averages gradients)."""
    total = img.new_zeros(())
    start = 0
    for task, target, valid in zip(tasks, targets, global_valid, strict=True):
        protos = []
        for prompts in task["classes"].values():
            protos.append(F.normalize(prompt_txt[start : start + len(prompts)].mean(0), dim=-1))
            start += len(prompts)
        keep = target >= 0
        if valid and bool(keep.any()):
            logits = scale * img[keep] @ torch.stack(protos).t()
            total = total + F.cross_entropy(logits, target[keep].to(img.device), reduction="sum") * world_size / valid
    return total / max(1, len(tasks))


def _init_from(model: Any, source: str) -> None:
    """Copy a checkpoint's weights (file or folder; any float dtype) into ``model``; every trainable tensor must
    be present with the same shape."""
    from medfoundry.registry.loading import find_checkpoint_file, load_state_dict

    path = Path(source)
    state = load_state_dict(find_checkpoint_file(path) if path.is_dir() else path)
    own = model.trainable_state_dict()
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        raise InputContractError(f"{source} does not fit this architecture: missing {missing[:5]}, "
                                 f"shape differs {wrong[:5]}")
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=False)


def group_by_image(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[list[str]]]:
    """One row per distinct image (first occurrence, in file order) and each image's captions, in order."""
    first: dict[str, int] = {}
    images: list[dict[str, str]] = []
    texts: list[list[str]] = []
    for r in rows:
        if r["image"] not in first:
            first[r["image"]] = len(images)
            images.append(r)
            texts.append([])
        if r["text"] not in texts[first[r["image"]]]:
            texts[first[r["image"]]].append(r["text"])
    return images, texts


def epoch_order(sources: list[str], repeat: dict[str, float], generator: torch.Generator) -> list[int]:
    """Shuffled image indices for one epoch; a source with repeat r appears floor(r) times plus once more with
    probability r - floor(r) (``repeat`` rebalances sources; absent sources appear once)."""
    picks: list[int] = []
    draws = torch.rand(len(sources), generator=generator).tolist()
    for i, (src, u) in enumerate(zip(sources, draws, strict=True)):
        r = repeat.get(src, 1.0)
        picks.extend([i] * (int(r) + (1 if u < r - int(r) else 0)))
    perm = torch.randperm(len(picks), generator=generator).tolist()
    return [picks[j] for j in perm]


class _ClipTask:
    """The contrastive task of :func:`train_clip` for :class:`~medfoundry.train.trainer.Trainer`: every rank draws
    the global batch (order, augmentations, caption picks) from one generator re-seeded per epoch and computes its
    shard; the loss sees the features of the whole global batch."""

    loss_key = "loss"
    clock_schedule = False

    def __init__(self, cfg: ClipTrainConfig, trainer: Trainer, model: Any, images: torch.Tensor,
                 train_rows: list[dict[str, str]], train_texts: list[list[str]], feats: dict[str, torch.Tensor],
                 val_rows: list[dict[str, str]], val_images: torch.Tensor | None, contract: Preprocess,
                 attr_prompts: list[str]) -> None:
        self.cfg, self.trainer, self.model, self.images = cfg, trainer, model, images
        self.contract = contract
        self.attr_targets = [attribute_targets(train_rows, task) for task in cfg.train_attributes]
        self.attr_feats = torch.stack([feats[p] for p in attr_prompts]) if attr_prompts else None
        self.train_texts, self.feats, self.val_rows, self.val_images = train_texts, feats, val_rows, val_images
        self.sources = [r["source"] for r in train_rows]
        self.labels = [r["label"] for r in train_rows]
        self.global_batch = cfg.batch_size * trainer.world_size
        expected = sum(cfg.source_repeat.get(src, 1.0) for src in self.sources)
        self.steps_per_epoch = max(1, int(expected) // self.global_batch)
        self.epochs = cfg.epochs
        self.total = self.steps_per_epoch * cfg.epochs
        self.gen = torch.Generator()
        self.order: list[int] = []

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - cfg.warmup_steps)
                                            / max(1, self.total - cfg.warmup_steps)))

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        self.gen.manual_seed(self.cfg.seed * 1000 + epoch)
        self.order = epoch_order(self.sources, self.cfg.source_repeat, self.gen)
        self.model.train()
        for s in range(first_step):  # a resumed epoch: the draws of the steps already done
            self._draw(s)

    def _draw(self, step: int) -> tuple[list[int], dict[str, torch.Tensor], list[str]] | None:
        """The global batch of ``step``: image indices, augmentation parameters (the same draws on every rank)
        and the caption of each image; None when the epoch's order has no full batch left."""
        idx = self.order[step * self.global_batch : (step + 1) * self.global_batch]
        if len(idx) < self.global_batch:
            return None
        aug = augment_params(len(idx), self.gen, self.cfg.augment)
        picks = torch.randint(0, 1 << 30, (len(idx),), generator=self.gen).tolist()
        texts = [self.train_texts[i][k % len(self.train_texts[i])] for i, k in zip(idx, picks, strict=True)]
        return idx, aug, texts

    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor | None:
        drawn = self._draw(step)
        if drawn is None:
            return None
        idx, aug, texts = drawn
        cfg, trainer = self.cfg, self.trainer
        part, device = trainer.shard(len(idx)), trainer.device
        local = idx[part]
        x = augment(self.images[local].float(), {k: v[part] for k, v in aug.items()}, self.contract.mean[0],
                    self.contract.std[0]).to(device)
        tf = torch.stack([self.feats[t] for t in texts[part]]).to(device)
        if self.attr_feats is not None:
            tf = torch.cat([tf, self.attr_feats.to(device)])
        img, txt, scale = module(x, tf)  # bf16 autocast inside the wrapped forward when enabled
        img_local, prompt_txt, txt = img.float(), txt[len(local):].float(), txt[: len(local)]
        img, txt = trainer.gather(img_local), trainer.gather(txt.float())
        targets = soft_targets([self.labels[i] for i in idx], texts, cfg.label_weight)
        loss = clip_loss(img, txt, scale.float(), targets)
        if self.attr_feats is not None and cfg.attribute_weight > 0:
            loss = loss + cfg.attribute_weight * attribute_loss(
                img_local, prompt_txt, scale.float(), cfg.train_attributes,
                [t[torch.tensor(local)] for t in self.attr_targets],
                [int((t[torch.tensor(idx)] >= 0).sum()) for t in self.attr_targets], trainer.world_size)
        return loss

    def validate(self, epoch: int) -> dict[str, Any]:
        """Zero-shot AUROC per validation source, and per attribute of ``cfg.val_attributes``."""
        cfg, val_rows, val_images, device = self.cfg, self.val_rows, self.val_images, self.trainer.device
        entry: dict[str, Any] = {}
        if val_images is None or epoch < 0:
            return entry
        self.model.eval()
        attribute_sources = {task["source"] for task in cfg.val_attributes}  # scored per attribute below
        for source in sorted({r["source"] for r in val_rows}):
            sel = [i for i, r in enumerate(val_rows) if r["source"] == source]
            labs = [val_rows[i]["label"] for i in sel]
            if len(set(labs)) > 1 and source not in attribute_sources:
                entry[f"val_auroc_{source}"] = zero_shot_auroc(self.model, val_images[sel], labs, self.feats,
                                                               cfg.eval_templates, device)
        for task in cfg.val_attributes:
            sel = [i for i, r in enumerate(val_rows) if r["source"] == task["source"]]
            labs = [val_rows[i]["label"].split()[task["part"]] for i in sel]
            keep = [j for j, lab in enumerate(labs) if lab in task["prompts"]]
            if sel and len({labs[j] for j in keep}) > 1:
                name = f"val_auroc_{task['source']}_{task.get('name', task['part'])}"
                entry[name] = zero_shot_auroc(self.model, val_images[[sel[j] for j in keep]],
                                              [task["prompts"][labs[j]] for j in keep], self.feats, ["{}"], device)
        return entry

    def state(self) -> dict[str, torch.Tensor]:
        return {}  # every draw is replayed from the seed

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=False)


def train_clip(cfg: ClipTrainConfig) -> Path:
    """Train, evaluate each epoch, checkpoint, and write a self-describing model folder to ``cfg.out/model``.

    ``cfg.batch_size`` is per process: under ``torchrun`` with N processes a step sees a global batch of
    N × batch_size samples (augmented and captioned exactly as one process with that batch would), the loss
    uses the features of the whole global batch, and gradients are averaged by DistributedDataParallel.
    """
    from medfoundry.models.text import MiniLMTextEncoder, minilm_tokenizer

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = cfg.amp and (device.startswith("cuda") or cfg.cpu_bf16)
    trainer = Trainer(TrainerConfig(out=cfg.out, seed=cfg.seed, device=device, bf16=bf16,
                                    stop_after_steps=cfg.stop_after_steps, checkpoint_every=cfg.checkpoint_every))
    rows = read_pairs(cfg.pairs)[: cfg.max_rows]
    train_rows, train_texts = group_by_image([r for r in rows if r["split"] == "train"])
    val_rows, _ = group_by_image([r for r in rows if r["split"] == "val" and r["label"]])
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
    prompts += [p for task in cfg.val_attributes for p in task["prompts"].values()]
    attr_prompts = [p for task in cfg.train_attributes for ps in task["classes"].values() for p in ps]
    prompts += attr_prompts
    unique = sorted({t for ts in train_texts for t in ts} | set(prompts))
    feats = {}
    with torch.no_grad():
        for i in range(0, len(unique), 128):
            ids, mask = tokenize(unique[i : i + 128])
            for t, f in zip(unique[i : i + 128], text(ids, mask), strict=True):
                feats[t] = f
    del text

    model = build_dual_encoder(asdict(arch), pretrained_text=False).to(trainer.device)
    model.text = None  # not needed during training: its features are cached above
    if cfg.init_weights:
        _init_from(model, cfg.init_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    task = _ClipTask(cfg, trainer, model, images, train_rows, train_texts, feats, val_rows, val_images, contract,
                     attr_prompts)
    step_module, opt = trainer.setup(ContrastiveStep(model), opt)
    history = trainer.fit(task, step_module, opt)
    if trainer.interrupted:
        return trainer.out / "model"
    trainer.check_in_sync(model)
    record = ModelRecord.from_dict({
        "name": "medfoundry-clip-tiny", "arch": "medfoundry_clip", "arch_config": asdict(arch),
        "family": "TPM-contrastive", "tasks": ["zero-shot-classification", "retrieval", "embedding", "grounding",
                                               "linear-probe"],
        "modalities": ["CR", "DX", "CT", "endoscopy"], "license": "see MODEL_CARD.md", "commercial_use": False,
        "paper": "medfoundry", "training_data": f"pairs from {cfg.pairs}", "templates": cfg.eval_templates,
        "preprocess": cfg.contract,
    })
    return trainer.finish(model.trainable_state_dict(), record, history, cfg)
