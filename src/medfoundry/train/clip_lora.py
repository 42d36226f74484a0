"""LoRA fine-tuning (peft) of either tower — or both — of any contrastive model medfoundry can load:
its own dual encoder, open_clip and OpenAI-format CLIPs (BiomedCLIP, CheXzero...) and transformers CLIPModels.

The base weights stay frozen; rank-``r`` adapters are injected into the Linear (and, for CNN image towers,
Conv2d) layers of the chosen tower(s) and trained with the CLIP loss (optionally MedCLIP-style soft targets)
on an image–text pairs CSV. At the end the adapters are merged into their layers and the model is written in
its own published format, plus ``medfoundry.json``, so ``--model local-dir:OUT/model`` loads it like the
original. Each epoch reports the validation loss. The loop (resume points, torchrun) is
:class:`medfoundry.train.trainer.Trainer`'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError
from medfoundry.train.clip import clip_loss, read_pairs, soft_targets
from medfoundry.train.trainer import Trainer, TrainerConfig

TOWERS = ("image", "text", "both")


@dataclass
class ClipLoraConfig:
    model: str
    pairs: str
    out: str
    weights: str | None = None
    tower: str = "both"
    rank: int = 8
    alpha: int = 16
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-4
    label_weight: float = 0.0
    seed: int = 0
    max_rows: int | None = None
    #: end this process after that many optimiser steps, writing a resume point there (an interruption)
    stop_after_steps: int | None = None
    #: also write the resume point ``last.pt`` every that many steps inside an epoch (None: at epoch ends only)
    checkpoint_every: int | None = None


def tower_modules(backend: Any) -> dict[str, torch.nn.Module]:
    """The image and text towers of a backend's model, by name."""
    model = backend.model
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):  # transformers CLIPModel
        return {"image": model.vision_model, "text": model.text_model}
    if hasattr(model, "visual") and hasattr(model, "image_proj"):  # medfoundry DualEncoder
        return {"image": model.visual, "text": model.text}
    if hasattr(model, "visual"):  # open_clip CLIP / CustomTextCLIP
        text = model.text if hasattr(model, "text") else model.transformer
        return {"image": model.visual, "text": text}
    raise InputContractError(f"cannot find the towers of {type(model).__name__}")


def lora_targets(module: torch.nn.Module) -> list[str]:
    """Names of the layers LoRA adapts in ``module``: every Linear; in CNNs without Linear layers, the
    undilated, ungrouped Conv2d with kernels ≥ 3 (peft's conv adapters do not carry dilation or groups)."""
    linear = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n]
    if linear:
        return linear
    return [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
            and m.dilation == (1, 1) and m.groups == 1]


def inject_lora(backend: Any, tower: str, rank: int, alpha: int) -> int:
    """Freeze the model and add LoRA adapters to ``tower`` ("image", "text" or "both"); returns the number of
    trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    if tower not in TOWERS:
        raise InputContractError(f"unknown tower {tower!r}: use image, text or both")
    if rank < 1:
        raise InputContractError(f"LoRA rank must be ≥ 1 (got {rank})")
    backend.model.requires_grad_(False)
    towers = tower_modules(backend)
    for name in (["image", "text"] if tower == "both" else [tower]):
        targets = lora_targets(towers[name])
        if not targets:
            raise InputContractError(f"the {name} tower has no Linear or Conv2d layer to adapt")
        # one exact regex: peft matches list entries by suffix, which would also catch excluded layers
        exact = "^(?:" + "|".join(re.escape(t) for t in targets) + ")$"
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=exact), towers[name])
    return sum(p.numel() for p in backend.model.parameters() if p.requires_grad)


def _logit_scale(predictor) -> torch.Tensor:
    return torch.tensor(predictor.logit_scale)


def _batches(n: int, size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen).tolist() if gen is not None else list(range(n))
    return [order[i : i + size] for i in range(0, n, size) if len(order[i : i + size]) > 1]


def _loss(predictor, pixels: torch.Tensor, texts: list[str], labels: list[str], weight: float) -> torch.Tensor:
    backend = predictor.backend
    img = F.normalize(backend.encode_image(pixels), dim=-1)
    txt = F.normalize(backend.encode_text(texts), dim=-1)
    return clip_loss(img, txt, _logit_scale(predictor), soft_targets(labels, texts, weight))


def _save(predictor, folder: Path, record_name: str) -> Path:
    from dataclasses import replace

    from medfoundry.predict.contrastive import save_open_clip_folder
    from medfoundry.registry.loading import save_checkpoint, write_checkpoint_record

    model, record = predictor.backend.model, replace(predictor.record, name=record_name, weights=[])
    folder.mkdir(parents=True, exist_ok=True)
    if record.arch in ("medfoundry_clip", "openai_clip"):
        state = model.state_dict()
        return save_checkpoint(state, record, folder, overwrite=True)
    if record.arch == "open_clip":
        source = Path(predictor.source) if getattr(predictor, "source", None) else None
        config = json.loads((source / "open_clip_config.json").read_text()) if source else {}
        save_open_clip_folder(model, config, folder)
    elif record.arch == "hf_clip":
        model.save_pretrained(str(folder))
        predictor.backend.tokenizer.save_pretrained(str(folder))
    return write_checkpoint_record(record, folder, overwrite=True)


class LoraStep(torch.nn.Module):
    """Both towers' unit embeddings of this rank's rows, as a module whose ``forward`` DistributedDataParallel
    wraps (the backend's encoders call the model's methods, which DDP alone would not see)."""

    def __init__(self, backend: Any) -> None:
        super().__init__()
        self.model, self.backend = backend.model, backend

    def forward(self, pixels: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.normalize(self.backend.encode_image(pixels), dim=-1),
                F.normalize(self.backend.encode_text(texts), dim=-1))


class _LoraTask:
    """:func:`finetune_clip_lora`'s task for :class:`~medfoundry.train.trainer.Trainer`: one permutation per epoch
    from the seed's generator, cut into global batches of world × batch_size rows (a last short batch too); each
    rank embeds its shard and the loss sees the whole global batch."""

    loss_key = "train_loss"
    clock_schedule = False

    def __init__(self, cfg: ClipLoraConfig, trainer: Trainer, predictor: Any, train: list[dict[str, str]],
                 x_train: torch.Tensor, val_loss: Any, trainable: int) -> None:
        self.cfg, self.trainer, self.predictor, self.train, self.x_train = cfg, trainer, predictor, train, x_train
        self.val_loss, self.trainable = val_loss, trainable
        self.global_batch = cfg.batch_size * trainer.world_size
        self.smallest = max(2, trainer.world_size)  # a batch of one has no negatives; every rank needs a row
        sizes = [min(self.global_batch, len(train) - i) for i in range(0, len(train), self.global_batch)]
        self.steps_per_epoch = sum(1 for n in sizes if n >= self.smallest)
        self.epochs = cfg.epochs
        self.gen, self.next_epoch = torch.Generator().manual_seed(cfg.seed), 0
        self.chunks: list[list[int]] = []

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        return self.cfg.lr  # constant

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        if epoch != self.next_epoch:  # a resumed run: replay the earlier epochs' permutations
            self.gen.manual_seed(self.cfg.seed)
            for _ in range(epoch):
                torch.randperm(len(self.train), generator=self.gen)
        order = torch.randperm(len(self.train), generator=self.gen).tolist()
        self.chunks = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)
                       if len(order[i : i + self.global_batch]) >= self.smallest]
        self.next_epoch = epoch + 1
        # the model stays in eval mode: frozen BatchNorm statistics and no dropout, so the base is untouched
        self.predictor.backend.model.eval()

    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor | None:
        rows = self.chunks[step]
        local = rows[self.trainer.shard(len(rows))]
        img, txt = module(self.x_train[local], [self.train[i]["text"] for i in local])
        img, txt = self.trainer.gather(img, len(rows)), self.trainer.gather(txt, len(rows))
        targets = soft_targets([self.train[i]["label"] for i in rows], [self.train[i]["text"] for i in rows],
                               self.cfg.label_weight)
        return clip_loss(img, txt, _logit_scale(self.predictor), targets)

    def validate(self, epoch: int) -> dict[str, Any]:
        if epoch < 0:
            return {"val_loss": self.val_loss(), "trainable_parameters": self.trainable}
        return {"val_loss": self.val_loss()}

    def state(self) -> dict[str, torch.Tensor]:
        return {}  # permutations are replayed from the seed

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.predictor.backend.model.named_parameters() if p.requires_grad}

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.predictor.backend.model.load_state_dict(state, strict=False)


def finetune_clip_lora(cfg: ClipLoraConfig, progress: bool = True) -> Path:
    """Train LoRA adapters per ``cfg``; returns the merged model folder ``cfg.out/model``.

    ``cfg.batch_size`` is per process: under ``torchrun`` with N processes a step uses N × batch_size rows and the
    loss sees all their features. Resumable from ``cfg.out/last.pt`` (the adapters and the optimiser)."""
    from rich.progress import track

    from medfoundry.io import read_image
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.predict.preprocess import preprocess_batch
    from medfoundry.train.sam import merge_lora

    trainer = Trainer(TrainerConfig(out=cfg.out, seed=cfg.seed, device="cpu", stop_after_steps=cfg.stop_after_steps,
                                    checkpoint_every=cfg.checkpoint_every, progress=False))
    rows = read_pairs(cfg.pairs)[: cfg.max_rows]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    if len(train) < 2:
        raise InputContractError(f"{cfg.pairs} has {len(train)} training rows; LoRA needs at least 2")
    predictor = open_contrastive(cfg.model, cfg.weights)
    trainable = inject_lora(predictor.backend, cfg.tower, cfg.rank, cfg.alpha)

    def pixels_of(subset):
        images = []
        for r in track(subset, description="loading images", disable=not progress or not trainer.is_main):
            image = read_image(r["image"])
            images.append(image.slice(image.array.shape[0] // 2) if image.is_volume else image)
        return preprocess_batch(images, predictor.record.preprocess) if images else None

    x_train, x_val = pixels_of(train), pixels_of(val)
    params = [p for p in predictor.backend.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def val_loss() -> float | None:
        if x_val is None or len(val) < 2:
            return None
        with torch.no_grad():
            losses = [float(_loss(predictor, x_val[b], [val[i]["text"] for i in b], [val[i]["label"] for i in b],
                                  cfg.label_weight)) for b in _batches(len(val), cfg.batch_size, None)]
        return float(np.mean(losses))

    predictor.backend.model.eval()
    task = _LoraTask(cfg, trainer, predictor, train, x_train, val_loss, trainable)
    step_module, opt = trainer.setup(LoraStep(predictor.backend), opt)
    history = trainer.fit(task, step_module, opt)
    if trainer.interrupted:
        return trainer.out / "model"
    trainer.check_in_sync(predictor.backend.model)
    folder = trainer.out / "model"
    if trainer.is_main:
        merge_lora(predictor.backend.model)
        folder = _save(predictor, folder, f"{predictor.record.name}-lora")
        (trainer.out / "history.json").write_text(json.dumps(history, indent=2))
        (trainer.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    trainer.barrier()
    return folder
