"""medfoundry's own CLIP-style dual encoder: a timm convolutional image tower and the MiniLM text tower.

The image tower keeps its spatial feature map: each location is projected into the joint space with the
same linear map as the pooled feature, so the global embedding is the mean of the local ones and a
text–patch similarity map (grounding heatmap) is exactly consistent with the image-level score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.errors import InputContractError
from medfoundry.models.text import MINILM_CONFIG, MiniLMTextEncoder


@dataclass
class DualEncoderConfig:
    """Architecture of :class:`DualEncoder`.

    Attributes:
        image_backbone: a timm model name, built without pretrained weights (e.g. ``"resnet18"``).
        image_size: square input side in pixels.
        in_chans: image channels.
        output_stride: backbone stride (16 dilates the last stage: finer grounding maps).
        embed_dim: joint embedding width.
        text_config: BertConfig kwargs of the text tower (MiniLM by default).
        max_text_tokens: tokenizer truncation length.
        text_trainable: whether the text tower's weights are trained (and saved with the checkpoint).
    """

    image_backbone: str = "resnet18"
    image_size: int = 224
    in_chans: int = 3
    output_stride: int = 32
    embed_dim: int = 256
    text_config: dict[str, Any] = field(default_factory=lambda: dict(MINILM_CONFIG))
    max_text_tokens: int = 128
    text_trainable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DualEncoder(nn.Module):
    """Image tower + text tower + projections into a joint space of width ``embed_dim``.

    - ``encode_image(x)``: x (B, C, S, S) float32 normalised per the record's contract → (B, D), L2-normalised.
    - ``encode_image_dense(x)``: → (B, D, h, w) per-location embeddings (not normalised), stride of the backbone.
    - ``encode_text(ids, mask)``: (B, T) token ids and attention mask → (B, D), L2-normalised.
    """

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        import timm

        self.config = config
        extra = {"output_stride": config.output_stride} if config.output_stride != 32 else {}
        self.visual = timm.create_model(config.image_backbone, pretrained=False, num_classes=0, global_pool="",
                                        in_chans=config.in_chans, **extra)
        width = self.visual.num_features
        self.image_proj = nn.Linear(width, config.embed_dim)
        self.text = MiniLMTextEncoder(config.text_config)
        self.text_proj = nn.Linear(self.text.width, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if not config.text_trainable:
            self.text.requires_grad_(False)

    def _check(self, x: torch.Tensor) -> None:
        c, s = self.config.in_chans, self.config.image_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[-1] != s or x.shape[-2] != s:
            raise InputContractError(f"expected images (B, {c}, {s}, {s}), got {tuple(x.shape)}")

    def encode_image_dense(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        features = self.visual.forward_features(x)  # B, C, h, w
        return self.image_proj(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # same map at every location

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.encode_image_dense(x)
        return F.normalize(dense.mean(dim=(2, 3)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(input_ids, attention_mask)), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings (B, D), text embeddings (B, D), logit scale) for the contrastive loss."""
        return self.encode_image(images), self.encode_text(input_ids, attention_mask), self.logit_scale.exp()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint must store: everything but a frozen text tower (which comes from its package)."""
        state = self.state_dict()
        if self.config.text_trainable:
            return state
        return {k: v for k, v in state.items() if not k.startswith("text.")}


def build_dual_encoder(arch_config: dict[str, Any], *, pretrained_text: bool = True) -> DualEncoder:
    """Build a :class:`DualEncoder` from a record's ``arch_config``; with ``pretrained_text`` the frozen MiniLM
    tower is filled from its installed package (a local file, never a download)."""
    known = set(DualEncoderConfig.__dataclass_fields__)
    unknown = set(arch_config) - known
    if unknown:
        raise InputContractError(f"unknown DualEncoder settings {sorted(unknown)}")
    model = DualEncoder(DualEncoderConfig(**arch_config))
    if pretrained_text:
        model.text.load_pretrained()
    return model
