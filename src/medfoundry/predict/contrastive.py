"""ContrastivePredictor: embeddings, zero-shot scores and grounding maps for any CLIP-style model.

Backends wrap each published format behind one small interface, using the reference library itself:
open_clip for open_clip-format (BiomedCLIP) and OpenAI-format (CheXzero) checkpoints, transformers for
HF ``CLIPModel`` checkpoints, and medfoundry's :class:`DualEncoder` for the embedded models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError, RegistryError, WeightsError
from medfoundry.io.image import MedImage
from medfoundry.io.read import read_image
from medfoundry.predict.preprocess import preprocess_batch
from medfoundry.registry.loading import LoadedWeights
from medfoundry.registry.records import ModelRecord


class ContrastiveBackend(Protocol):
    """What a CLIP-style model must offer: normalised image and text embeddings of one width, and the
    ``model`` (an ``nn.Module``) they run, which precision changes replace."""

    model: Any

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (B, C, S, S) → (B, D), unit norm
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...  # → (B, D), unit norm


class DualEncoderBackend:
    """medfoundry's :class:`DualEncoder` with its MiniLM tokenizer."""

    def __init__(self, model: Any) -> None:
        from medfoundry.models.text import minilm_tokenizer

        self.model = model.eval()
        self.tokenize = minilm_tokenizer(model.config.max_text_tokens)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_image_dense(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image_dense(pixels)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(list(texts))
        return self.model.encode_text(ids, mask)


class OpenClipBackend:
    """An open_clip model and its tokenizer (open_clip-format and OpenAI-format checkpoints)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts))), dim=-1)


class HFClipBackend:
    """A transformers ``CLIPModel`` with its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        return F.normalize(_features(self.model.get_text_features(**batch)), dim=-1)


def _features(out: Any) -> torch.Tensor:
    """transformers ≥5 may return a model output instead of a tensor from get_*_features."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


class ContrastivePredictor:
    """Embeds images and texts with one model, applying the record's preprocessing contract.

    Hold one instance per model (a web app keeps it for its lifetime); text embeddings are cached.
    """

    def __init__(self, backend: ContrastiveBackend, record: ModelRecord, device: str = "cpu",
                 batch_size: int = 32) -> None:
        self.backend = backend
        self.record = record
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.precision = "fp32"
        self.source: Path | None = None
        self.loaded_weights: LoadedWeights | None = None  # the weights file and its sha256 (set by the loader)
        self._text_cache: dict[str, torch.Tensor] = {}

    def set_precision(self, precision: str) -> ContrastivePredictor:
        """``fp32`` (default), ``bf16`` (the model's weights and activations in bfloat16: native on CPUs with
        AVX512-BF16/AMX and on GPUs; per-op autocast is slower on CPU) or ``int8`` (dynamic int8 quantisation of
        the Linear layers, CPU). Embeddings stay float32 and unit norm; measure the agreement with fp32 for your
        model (benchmarks/clip_throughput.py does for an open_clip ViT-B/16)."""
        if precision not in ("fp32", "bf16", "int8"):
            raise InputContractError(f"unknown precision {precision!r}: use fp32, bf16 or int8")
        if precision == "int8":
            if self.device.type != "cpu":
                raise InputContractError("int8 dynamic quantisation runs on the CPU only")
            model = getattr(self.backend, "model", None)
            if model is None:
                raise InputContractError(f"{self.record.name}'s backend cannot be quantised")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            for module in quantized.modules():  # open_clip reads this to find the compute dtype of int8 layers
                if type(module).__name__ == "Linear" and callable(getattr(module, "weight", None)):
                    module.int8_original_dtype = torch.float32
            self.backend.model = quantized
        elif precision == "bf16":
            model = getattr(self.backend, "model", None)
            if model is None:
                raise InputContractError(f"{self.record.name}'s backend cannot run in bfloat16")
            self.backend.model = model.to(torch.bfloat16)
        self.precision = precision
        self._text_cache.clear()
        return self

    @property
    def _dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @staticmethod
    def _as_images(images: Sequence[MedImage | str | Path]) -> list[MedImage]:
        return [im if isinstance(im, MedImage) else read_image(im) for im in images]

    @torch.inference_mode()
    def embed_images(self, images: Sequence[MedImage | str | Path], progress: bool = False) -> np.ndarray:
        """L2-normalised image embeddings ``(N, D)`` float32, in input order. Volumes must be sliced first."""
        items = list(images)
        if not items:
            raise InputContractError("no images given")
        out = []
        from rich.progress import track

        starts = range(0, len(items), self.batch_size)
        for start in track(starts, description="embedding", disable=not progress or len(items) <= self.batch_size):
            chunk = self._as_images(items[start : start + self.batch_size])
            pixels = preprocess_batch(chunk, self.record.preprocess).to(self.device, self._dtype)
            out.append(F.normalize(self.backend.encode_image(pixels).float(), dim=-1).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings ``(N, D)`` float32, cached per string."""
        texts = list(texts)
        if not texts:
            raise InputContractError("no texts given")
        new = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for start in range(0, len(new), 64):
            chunk = new[start : start + 64]
            encoded = F.normalize(self.backend.encode_text(chunk).float(), dim=-1).cpu()
            for text, emb in zip(chunk, encoded, strict=True):
                self._text_cache[text] = emb
        return torch.stack([self._text_cache[t] for t in texts]).numpy()

    @torch.inference_mode()
    def dense_similarity(self, image: MedImage, text: str) -> np.ndarray:
        """Patch-level cosine similarity ``(h, w)`` between ``text`` and each location of the model input."""
        dense = getattr(self.backend, "encode_image_dense", None)
        if dense is None:
            raise InputContractError(f"{self.record.name} has no patch-level image features for grounding")
        pixels = preprocess_batch([image], self.record.preprocess).to(self.device, self._dtype)
        local = F.normalize(dense(pixels)[0].float().cpu(), dim=0)  # D, h, w
        query = torch.from_numpy(self.embed_texts([text])[0])
        return torch.einsum("dhw,d->hw", local, query).numpy()

    @property
    def logit_scale(self) -> float:
        """Temperature of the model's softmax over similarities (100 for CLIP-like models without one)."""
        model = getattr(self.backend, "model", None)
        scale = getattr(model, "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


def load_contrastive(record: ModelRecord, weights: Any, device: str = "cpu") -> ContrastivePredictor:
    """Build the backend for ``record`` and attach the resolved ``weights`` (a path or state dict); the
    predictor's ``source`` remembers the path (fine-tuning writes its result in the same format)."""
    predictor = _load_contrastive(record, weights, device)
    predictor.source = Path(weights) if isinstance(weights, (str, Path)) else None
    predictor.loaded_weights = LoadedWeights(weights)
    return predictor


def _load_contrastive(record: ModelRecord, weights: Any, device: str) -> ContrastivePredictor:
    from medfoundry.registry.loading import load_state_dict

    arch = record.arch
    if arch == "medfoundry_clip":
        from medfoundry.models.clip import build_dual_encoder

        model = build_dual_encoder(record.arch_config)
        state = load_state_dict(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("text.")]
        if missing or unexpected:
            raise WeightsError(f"{record.name}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return ContrastivePredictor(DualEncoderBackend(model.to(device)), record, device)
    if arch == "open_clip":
        import open_clip

        folder = Path(weights)
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsError(f"{folder} is not an open_clip model folder (no open_clip_config.json)")
        model = open_clip.create_model(f"local-dir:{folder}", device=device)
        return ContrastivePredictor(OpenClipBackend(model, open_clip.get_tokenizer(f"local-dir:{folder}")), record,
                                    device)
    if arch == "openai_clip":
        import open_clip
        from open_clip.model import build_model_from_openai_state_dict

        state = load_state_dict(weights)
        model = build_model_from_openai_state_dict(state).float().to(device)
        return ContrastivePredictor(OpenClipBackend(model, open_clip.get_tokenizer("ViT-B-32")), record, device)
    if arch == "hf_clip":
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(weights)
        loaded: Any = CLIPModel.from_pretrained(str(folder), local_files_only=True)  # transformers types .to() oddly
        model = loaded.to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return ContrastivePredictor(HFClipBackend(model, tokenizer), record, device)
    if arch in _ADAPTERS:  # architectures whose adapters live in their own modules (models/<arch>.py)
        import importlib

        module, function = _ADAPTERS[arch].split(":")
        load = getattr(importlib.import_module(module), function)
        backend = load(weights, device, record.name, **record.arch_config)
        return ContrastivePredictor(backend, record, device)
    from medfoundry.registry.loading import require_runnable

    require_runnable(record)  # the record's own reason (MI-Zero), when it has one
    raise RegistryError(f"{record.name}: architecture {arch!r} is registered but medfoundry cannot run it yet")


#: arch → "module:function(weights, device, name, **arch_config) -> backend": published systems in their own modules
_ADAPTERS = {
    "hf_dinov2": "medfoundry.models.rad_dino:load_dinov2",
    "conch": "medfoundry.models.conch:load_conch",
    "medclip": "medfoundry.models.medclip:load_medclip",
}


def open_contrastive(model: str, weights: Any = None, device: str = "cpu") -> ContrastivePredictor:
    """Resolve ``--model``/``--weights`` through the registry and return a ready predictor."""
    from medfoundry.registry.loading import fetch_weights

    record, resolved = fetch_weights(model, weights)
    if "zero-shot-classification" not in record.tasks and "embedding" not in record.tasks:
        raise InputContractError(f"{record.name} is a {record.family} model, not a contrastive image-text model")
    return load_contrastive(record, resolved, device)


def save_open_clip_folder(model: Any, config: dict[str, Any], folder: Path) -> Path:
    """Write an open_clip-format folder (``open_clip_config.json`` + safetensors), as BiomedCLIP is published."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
