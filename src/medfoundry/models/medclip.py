"""MedCLIP-ViT (Wang et al., EMNLP 2022): a Swin-Tiny image tower and a BioClinicalBERT text tower.

The network is MedCLIP's ``MedCLIPModel(vision_cls=MedCLIPVisionModelViT)`` (``medclip`` package,
``modeling_medclip.py``), rebuilt here from transformers' own ``SwinModel`` and ``BertModel`` because the package
fetches both towers from the hub at construction and its ``encode_text`` moves inputs to CUDA:

- image: ``SwinModel(pixel_values).pooler_output`` ``(B, 768)`` → ``projection_head`` (768 → 512, no bias);
  single-channel input is repeated to three channels;
- text: ``BertModel`` with every hidden state; the mean over tokens (padding included, as MedCLIP does) of the
  stacked hidden states 1, 2 and the last, averaged → ``projection_head`` (768 → 512, no bias);
- both L2-normalised; ``logit_scale`` is a log temperature.

The published ``medclip-vit-pretrained.zip`` holds ``pytorch_model.bin`` with the parameter names of that model
(``vision_model.model.*``, ``vision_model.projection_head.weight``, ``text_model.model.*``,
``text_model.projection_head.weight``, ``logit_scale``); it is read from the zip with the safe loader. The tower
configs are Swin-Tiny's (``microsoft/swin-tiny-patch4-window7-224``: transformers' ``SwinConfig`` defaults) and
Bio_ClinicalBERT's (BERT-base, cased vocabulary of 28,996); the tokenizer is Bio_ClinicalBERT's, resolved lazily
from ``arch_config["tokenizer"]`` (a hub spec or a folder), at most 77 tokens. Texts are encoded one at a time,
so that padding (which MedCLIP averages over) never depends on the other texts of a batch.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.errors import InputContractError, WeightsError

#: Bio_ClinicalBERT is BERT-base with the cased vocabulary (bert-base-cased / BioBERT)
BIO_CLINICALBERT = {"vocab_size": 28996}
TOKENIZER = "hf-hub:emilyalsentzer/Bio_ClinicalBERT"
MAX_TOKENS = 77


class MedClipModel(nn.Module):
    """MedCLIP-ViT with MedCLIP's parameter names."""

    def __init__(self, vision_config: Mapping[str, Any] | None = None,
                 text_config: Mapping[str, Any] | None = None, proj_dim: int = 512) -> None:
        from transformers import BertConfig, BertModel, SwinConfig, SwinModel

        super().__init__()
        self.vision_model = nn.Module()
        self.vision_model.model = SwinModel(SwinConfig(**dict(vision_config or {})))
        self.vision_model.projection_head = nn.Linear(768, proj_dim, bias=False)
        self.text_model = nn.Module()
        self.text_model.model = BertModel(BertConfig(**{**BIO_CLINICALBERT, **dict(text_config or {})}),
                                          add_pooling_layer=True)
        self.text_model.projection_head = nn.Linear(768, proj_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, 224, 224)`` normalised pixels → ``(B, 512)`` unit-norm embeddings."""
        if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
            raise InputContractError(f"MedCLIP takes (B, 1 or 3, H, W) pixels, got shape {tuple(pixels.shape)}")
        if pixels.shape[1] == 1:
            pixels = pixels.repeat((1, 3, 1, 1))
        pooled = self.vision_model.model(pixel_values=pixels).pooler_output
        return F.normalize(self.vision_model.projection_head(pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``(B, T)`` → ``(B, 512)`` unit-norm embeddings (MedCLIP's layer-1/2/last token mean)."""
        out = self.text_model.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states
        stacked = torch.stack([hidden[1], hidden[2], hidden[-1]])  # layers, B, T, D
        embed = stacked.permute(1, 0, 2, 3).mean(2).mean(1)
        return F.normalize(self.text_model.projection_head(embed), dim=-1)


def read_medclip_state(weights: Any) -> dict[str, Any]:
    """MedCLIP's state dict from the published zip (its ``pytorch_model.bin``), a ``.bin`` file, a folder holding
    one, or a mapping. Loaded with ``weights_only``.

    Raises:
        WeightsError: a zip without ``pytorch_model.bin``, or an unreadable file.
    """
    from medfoundry.registry.loading import load_state_dict

    path = Path(weights) if isinstance(weights, (str, Path)) else None
    if path is not None and path.is_file() and path.suffix.lower() == ".zip":  # (a torch .bin is a zip too)
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "pytorch_model.bin"]
            if len(members) != 1:
                raise WeightsError(f"{path}: expected one pytorch_model.bin in the MedCLIP zip, found {members}")
            data = archive.read(members[0])
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{path}: {members[0]} is not a loadable state dict ({exc})") from exc
        return load_state_dict(state)
    return load_state_dict(weights)


class MedClipBackend:
    """MedCLIP-ViT with its tokenizer, for :class:`~medfoundry.predict.contrastive.ContrastivePredictor`."""

    def __init__(self, model: MedClipModel, tokenizer: Any, name: str = "medclip-vit") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        rows = []
        for text in texts:
            batch = self.tokenizer([text], truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            rows.append(self.model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)))
        return torch.cat(rows)


def load_medclip(weights: Any, device: str = "cpu", name: str = "medclip-vit", *,
                 vision_config: Mapping[str, Any] | None = None, text_config: Mapping[str, Any] | None = None,
                 tokenizer: str = TOKENIZER, **_: Any) -> MedClipBackend:
    """Build MedCLIP-ViT, load its weights (every parameter required) and its tokenizer (``tokenizer``: a
    ``hf-hub:`` spec or a folder, resolved now, not at import).

    Raises:
        WeightsError: the weights do not fit; WeightsNotFoundError: the tokenizer cannot be found offline.
    """
    from transformers import AutoTokenizer

    from medfoundry.registry.sources import resolve

    model = MedClipModel(vision_config, text_config)
    state = read_medclip_state(weights)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer older transformers saved
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{name}: the weights do not fit MedCLIP-ViT: {str(exc)[:300]}") from exc
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise WeightsError(f"{name}: the weights do not fit MedCLIP-ViT: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    folder = resolve(tokenizer)
    if not isinstance(folder, Path):
        raise WeightsError(f"{name}: the tokenizer must be a folder or hub spec, got {tokenizer!r}")
    loaded = AutoTokenizer.from_pretrained(str(folder if folder.is_dir() else folder.parent), local_files_only=True)
    loaded.model_max_length = MAX_TOKENS
    return MedClipBackend(model.to(device), loaded, name)
