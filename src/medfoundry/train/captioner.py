"""Train the embedded captioner (projector + LoRA on a frozen causal LM) on MedPix image–caption pairs.

Data: the training cases of ``medpix_ct_mr_captions`` (:func:`~medfoundry.datasets.splits.medpix_val_cases`
holds out 1 case in 5; their images are never read here). Each target is the image's attributes followed by
the radiologist's caption, cut to ``max_caption_tokens`` tokens (:func:`caption_target`), e.g.
``"Axial CT of the head. Lesion in the left lateral geniculate body."``; template captions are skipped.

The image side is the contrastive model's image tower, frozen: its embeddings are computed once and cached in
the run folder. The loop is small and CPU-friendly: AdamW, constant learning rate after a short warm-up, one
JSON line per logged step in ``log.jsonl``, a checkpoint (trained tensors, optimiser, step, RNG) every
``checkpoint_every`` steps that a rerun with the same ``out`` resumes from; the result is ``out/model``
(``config.json`` + ``adapter.safetensors``).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfoundry.datasets.pairs import medpix_attribute_captions, read_metadata
from medfoundry.datasets.splits import medpix_val_cases
from medfoundry.errors import InputContractError
from medfoundry.models.captioner import CaptionerConfig, build_captioner, load_language_model, save_captioner


@dataclass
class CaptionTrainConfig:
    """Settings of one training run (saved as ``train_config.json`` in the run folder). The defaults are the
    recipe of the shipped ``medfoundry-captioner-tiny`` (version 3)."""

    shared: str
    out: str
    steps: int = 500
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 10
    seed: int = 0
    prefix_tokens: int = 4
    lora_rank: int = 8
    max_caption_tokens: int = 32
    checkpoint_every: int = 25
    language_model: str = "smollm2-135m-instruct"
    image_encoder: str = "medfoundry-clip-tiny"


def caption_target(row: dict[str, str]) -> str:
    """The text the captioner learns for a MedPix row: ``"<Plane> <modality> of <region>. <caption>"`` with the
    caption's white space collapsed (the first attribute phrasing of
    :func:`~medfoundry.datasets.pairs.medpix_attribute_captions`)."""
    attrs = medpix_attribute_captions(row["modality"], row["plane"], row["body_region"])[0]
    caption = " ".join(row["caption"].split())
    return f"{attrs[:1].upper()}{attrs[1:]}. {caption}".strip()


def medpix_rows(shared: str | Path, split: str) -> list[dict[str, str]]:
    """MedPix rows of ``split`` (``train`` or ``val``, by case) with real captions, each with ``path`` added."""
    folder = Path(shared) / "medpix_ct_mr_captions"
    if not (folder / "metadata.csv").is_file():
        raise InputContractError(f"{folder} has no metadata.csv: give the shared data folder")
    rows = read_metadata(folder)
    val = medpix_val_cases(r["case_id"] for r in rows)
    keep = [r for r in rows if (r["case_id"] in val) == (split == "val") and r["caption_placeholder"] != "1"
            and r["caption"].strip()]
    for r in keep:
        r["path"] = str(folder / r["file"])
    return keep


def cached_features(predictor: Any, paths: list[str], cache: Path) -> np.ndarray:
    """``(N, D)`` image embeddings of ``paths`` (in order) from ``predictor``, cached in ``cache`` (an .npz keyed
    by the paths, the model name and its weights' sha256; recomputed when any differs)."""
    loaded = getattr(predictor, "loaded_weights", None)
    key = f"{predictor.record.name}@{loaded.sha256 if loaded is not None else ''}"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if list(z["paths"]) == paths and str(z["model"]) == key:
                return z["features"]
    feats = predictor.embed_images(paths, progress=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=feats, paths=np.array(paths), model=np.array(key))
    return feats


def _tokenise(tokenizer: Any, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded B×T ids (each text cut to ``max_tokens - 1`` tokens, then EOS) and their mask."""
    seqs = [[*tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens - 1], tokenizer.eos_token_id]
            for t in texts]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def train_on_features(config: CaptionTrainConfig, features: np.ndarray, texts: list[str], lm: Any, tokenizer: Any,
                      log: Any = print, image_encoder_sha256: str | None = None) -> Path:
    """The loop itself, on precomputed ``features`` (N×D) and their target ``texts``; returns ``out/model``."""
    if len(features) != len(texts) or not texts:
        raise InputContractError(f"{len(features)} feature rows for {len(texts)} texts")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    torch.manual_seed(config.seed)
    cap_config = CaptionerConfig(feature_dim=int(features.shape[1]), prefix_tokens=config.prefix_tokens,
                                 lm_hidden=int(lm.get_input_embeddings().weight.shape[1]),
                                 lora_rank=config.lora_rank, language_model=config.language_model,
                                 image_encoder=config.image_encoder, image_encoder_sha256=image_encoder_sha256,
                                 max_caption_tokens=config.max_caption_tokens)
    model = build_captioner(cap_config, lm)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    step, rng = 0, random.Random(config.seed)
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_trained_state(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step = int(state["step"])
        rng.setstate(json_to_state(state["rng"]))
        log(f"resumed from step {step}")
    feats = torch.from_numpy(np.asarray(features, dtype=np.float32))
    order: list[int] = []
    start = time.perf_counter()
    with open(out / "log.jsonl", "a", encoding="utf-8") as fh:
        while step < config.steps:
            if len(order) < config.batch_size:
                order = list(range(len(texts)))
                rng.shuffle(order)
            batch, order = order[: config.batch_size], order[config.batch_size :]
            ids, mask = _tokenise(tokenizer, [texts[i] for i in batch], config.max_caption_tokens)
            for group in optimiser.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
            loss = model(feats[batch], ids, mask)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            step += 1
            entry = {"step": step, "loss": round(float(loss.detach()), 4),
                     "seconds": round(time.perf_counter() - start, 1)}
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            if step % 10 == 0 or step == config.steps:
                log(json.dumps(entry))
            if step % config.checkpoint_every == 0 or step == config.steps:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.trained_state(), "optimiser": optimiser.state_dict(), "step": step,
                            "rng": state_to_json(rng.getstate())}, tmp)
                tmp.replace(ckpt)
    return save_captioner(model, out / "model")


def state_to_json(state: tuple) -> str:
    """``random.Random.getstate()`` as JSON text (checkpoints load with ``weights_only=True``)."""
    return json.dumps([state[0], list(state[1]), state[2]])


def json_to_state(text: str) -> tuple:
    version, internal, gauss = json.loads(text)
    return version, tuple(internal), gauss


def train_captioner(config: CaptionTrainConfig, log: Any = print) -> Path:
    """Embed the MedPix training images, load the language model and run :func:`train_on_features`."""
    from medfoundry.predict.contrastive import open_contrastive

    rows = medpix_rows(config.shared, "train")
    predictor = open_contrastive(config.image_encoder)
    paths = [r["path"] for r in rows]
    features = cached_features(predictor, paths, Path(config.out) / "features_train.npz")
    lm, tokenizer = load_language_model(config.language_model)
    log(f"{len(rows)} training images from {len({r['case_id'] for r in rows})} cases; features {features.shape}")
    loaded = getattr(predictor, "loaded_weights", None)
    return train_on_features(config, features, [caption_target(r) for r in rows], lm, tokenizer, log=log,
                             image_encoder_sha256=loaded.sha256 if loaded is not None else None)
