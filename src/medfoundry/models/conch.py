"""CONCH (Mahmood Lab): a CoCa-style ViT-B/16 pathology image-text model, run by its own package.

The reference is the ``conch-fork`` distribution (import name ``conch``, extra ``medfoundry[conch]``), which
holds CONCH's network (``conch.open_clip_custom.CoCa``), its model config ``conch_ViT-B-16`` (448 px input,
attentional pooling, a 12-layer text tower with a CLS token), its byte-level BPE tokenizer and the image
transform. The published weights (``hf-hub:MahmoodLab/CONCH/pytorch_model.bin``, gated) are a plain state
dict of that network. medfoundry builds the network from the package, loads the state dict with its own safe
loader (``weights_only``) and checks every parameter is present, then embeds with CONCH's contrastive heads:
``encode_image(proj_contrast=True)`` ``(B, 512)`` and ``encode_text`` on the package's tokenization
(127 tokens padded, one slot kept for the CLS token).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medfoundry.errors import InputContractError, WeightsError

#: the model config of the published CONCH weights (a JSON file shipped inside the conch package)
CONCH_CONFIG = "conch_ViT-B-16"


def _require_conch() -> Any:
    try:
        from conch import open_clip_custom
    except ImportError as exc:
        raise WeightsError("CONCH needs its reference package: pip install 'medfoundry[conch]' "
                           "(or pip install conch-fork)") from exc
    return open_clip_custom


def conch_config(model_cfg: str | Mapping[str, Any] = CONCH_CONFIG) -> dict[str, Any]:
    """The CoCa config: a name of a JSON shipped with the conch package, or the dict itself (tests build tiny
    ones). ``custom_text`` (a flag the package drops before building) is removed."""
    occ = _require_conch()
    if isinstance(model_cfg, Mapping):
        config = json.loads(json.dumps(dict(model_cfg)))
    else:
        from pathlib import Path

        path = Path(occ.__file__).parent / "model_configs" / f"{model_cfg}.json"
        if not path.is_file():
            raise WeightsError(f"the conch package has no model config {model_cfg!r}")
        config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("custom_text", None)
    return config


class ConchBackend:
    """A CONCH ``CoCa`` model with its tokenizer: contrastive image and text embeddings (unit norm)."""

    def __init__(self, model: Any, name: str = "conch") -> None:
        occ = _require_conch()
        self.model = model.eval()
        self.name = name
        self._tokenizer = occ.get_tokenizer()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CONCH's token ids ``(B, 128)``, as ``conch.open_clip_custom.tokenize`` makes them: at most 127
        tokens with the special tokens, padded to 127, then one pad slot that the model replaces with its CLS
        token. (The package calls ``batch_encode_plus``, which transformers 5 removed; ``__call__`` with the
        same arguments is the same encoding.)"""
        import torch.nn.functional as F

        tokens = self._tokenizer(list(texts), max_length=127, add_special_tokens=True,
                                 return_token_type_ids=False, truncation=True, padding="max_length",
                                 return_tensors="pt")
        return F.pad(tokens["input_ids"], (0, 1), value=self._tokenizer.pad_token_id)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` pixels normalised with the OpenAI mean/std → ``(B, 512)`` unit-norm embeddings."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InputContractError(f"{self.name} takes (B, 3, H, W) pixels, got shape {tuple(pixels.shape)}")
        patch = self.model.visual.trunk.patch_embed.patch_size[0]
        if pixels.shape[-1] % patch or pixels.shape[-2] % patch:
            raise InputContractError(f"{self.name}: image sides must be multiples of {patch}, got "
                                     f"{tuple(pixels.shape[-2:])}")
        return self.model.encode_image(pixels, proj_contrast=True, normalize=True)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts → ``(B, 512)`` unit-norm embeddings."""
        ids = self.tokenize(texts).to(next(self.model.parameters()).device)
        return self.model.encode_text(ids, normalize=True)


def build_conch(model_cfg: str | Mapping[str, Any] = CONCH_CONFIG) -> Any:
    """An untrained CONCH network from the conch package (``CoCa(**config)``)."""
    occ = _require_conch()
    return occ.CoCa(**conch_config(model_cfg))


def load_conch(weights: Any, device: str = "cpu", name: str = "conch",
               model_cfg: str | Mapping[str, Any] = CONCH_CONFIG) -> ConchBackend:
    """Build CONCH and load its published state dict (a ``pytorch_model.bin`` file or a mapping).

    Raises:
        WeightsError: the conch package is missing, or the state dict does not fit the network.
    """
    from medfoundry.registry.loading import load_state_dict

    occ = _require_conch()
    model = build_conch(model_cfg)
    state = load_state_dict(weights)
    from conch.open_clip_custom.coca_model import resize_pos_embed

    resize_pos_embed(state, model)  # as the package's load_checkpoint does (no-op when the sizes agree)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{name}: the weights do not fit CONCH's network: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model.visual.image_mean = occ.OPENAI_DATASET_MEAN
    model.visual.image_std = occ.OPENAI_DATASET_STD
    return ConchBackend(model.to(device), name)
