"""RAD-DINO (Microsoft): a DINOv2 ViT-B/14 chest X-ray encoder, run by transformers' own ``Dinov2Model``.

The published checkpoint (``hf-hub:microsoft/rad-dino``) is a transformers folder: ``config.json``
(``model_type: dinov2``), ``model.safetensors`` and ``preprocessor_config.json`` (a ``BitImageProcessor``:
shortest side to 518 px bicubic, centre crop 518 × 518, /255, mean 0.5307, std 0.2583). The image embedding
is the model card's: ``pooler_output``, the final-layernormed CLS token, ``(B, 768)``. RAD-DINO is image-only:
asking it for text embeddings is an :class:`~medfoundry.errors.InputContractError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medfoundry.errors import InputContractError, WeightsError, WeightsNotFoundError


class Dinov2Backend:
    """A transformers ``Dinov2Model``: ``encode_image`` gives the CLS embedding (``pooler_output``), and
    ``encode_image_dense`` the final-layernormed patch tokens as a map ``(B, D, h, w)``."""

    def __init__(self, model: Any, name: str = "rad-dino") -> None:
        self.model = model.eval()
        self.name = name

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised pixels → ``(B, D)`` CLS embeddings (not yet unit norm)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InputContractError(f"{self.name} takes (B, 3, H, W) pixels, got shape {tuple(pixels.shape)}")
        return self.model(pixel_values=pixels).pooler_output

    def encode_image_dense(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final layernorm, ``(B, D, H/14, W/14)``."""
        hidden = self.model(pixel_values=pixels).last_hidden_state
        patch = int(self.model.config.patch_size)
        h, w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
        tokens = hidden[:, hidden.shape[1] - h * w:]  # CLS (and any register tokens) come first
        return tokens.transpose(1, 2).reshape(hidden.shape[0], -1, h, w)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise InputContractError(f"{self.name} is an image-only encoder: it has no text embeddings "
                                 "(use it for embed, index and linear probes, not zero-shot classification)")


def load_dinov2(weights: Any, device: str = "cpu", name: str = "rad-dino") -> Dinov2Backend:
    """Load a transformers DINOv2 folder (``config.json`` + weights) as published on the hub.

    Raises:
        WeightsNotFoundError: ``weights`` is not a folder with ``config.json``.
        WeightsError: the folder is not a DINOv2 model or its weights do not fit.
    """
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(weights) if isinstance(weights, (str, Path)) else None
    if folder is None or not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"{name}: expected a transformers folder with config.json, got {weights!r}")
    config = Dinov2Config.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != "dinov2":
        raise WeightsError(f"{folder} holds a {config.model_type!r} model, not DINOv2")
    try:
        loaded: Any = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{name}: {folder} does not load as a Dinov2Model ({exc})") from exc
    return Dinov2Backend(loaded.to(device), name)
