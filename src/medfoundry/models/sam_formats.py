"""Published SAM-family checkpoint layouts, converted to segment_anything's key names on load.

- segment_anything (SAM, MedSAM): used as is.
- LiteMedSAM (``lite_medsam.pth``): segment_anything names for the prompt encoder and decoder, its own
  TinyViT names for the encoder (:mod:`medfoundry.models.tinyvit`).
- transformers ``SamModel`` (as ``wanglab/medsam-vit-base`` and ``facebook/sam-vit-*`` are published on the
  Hugging Face hub): keys renamed to segment_anything's; the tensors themselves are identical (checked
  against transformers' own SamModel in tests/models/test_sam_formats.py).

Detection is by key names, so ``--weights`` can point at either layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_HF_RENAMES = [
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
    (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^vision_encoder\.", "image_encoder."),
    (r"^shared_image_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r".transformer.layers.\1.norm\2."),
    (r"\.transformer\.layer_norm_final_attn\.", ".transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
]
_HF_MLP = re.compile(r"^(mask_decoder\.(?:iou_prediction_head|output_hypernetworks_mlps\.\d+))\.(proj_in|layers\.(\d+)|"
                     r"proj_out)\.(weight|bias)$")


def is_hf_sam(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a transformers ``SamModel`` state dict."""
    return any(k.startswith("vision_encoder.") for k in state) and any(k.startswith("mask_decoder.") for k in state)


def hf_sam_to_segment_anything(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``SamModel`` state dict to segment_anything's layout (tensors unchanged)."""
    hidden_layers: dict[str, int] = {}
    for key in state:
        m = _HF_MLP.match(key)
        if m and m.group(3) is not None:
            hidden_layers[m.group(1)] = max(hidden_layers.get(m.group(1), 0), int(m.group(3)) + 1)
    out = {}
    for key, value in state.items():
        if key.startswith("prompt_encoder.shared_embedding."):
            continue  # the same tensor as shared_image_embedding, stored twice by transformers
        m = _HF_MLP.match(key)
        if m:  # SamFeedForward: proj_in, layers[0..n-1], proj_out → MLP.layers[0..n+1]
            prefix, part, idx, kind = m.groups()
            n = 0 if part == "proj_in" else int(idx) + 1 if idx is not None else hidden_layers.get(prefix, 0) + 1
            out[f"{prefix}.layers.{n}.{kind}"] = value
            continue
        for pattern, repl in _HF_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def to_segment_anything(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported layout → segment_anything key names (LiteMedSAM: timm's names for its TinyViT convs)."""
    from medfoundry.models.tinyvit import is_litemedsam, litemedsam_to_timm_names

    if is_hf_sam(state):
        return hf_sam_to_segment_anything(state)
    return litemedsam_to_timm_names(state) if is_litemedsam(state) else dict(state)
