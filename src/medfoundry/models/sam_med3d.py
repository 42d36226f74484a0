"""SAM-Med3D (uni-medical): a fully 3D SAM, run by its reference package ``medim`` (tensors in, tensors out).

The network is ``medim``'s ``SAM_Med3D`` (3D ViT-B image encoder on 128³ crops with 16³ patches, 3D prompt
encoder, 3D mask decoder). The published checkpoint ``sam_med3d_turbo.pth`` is a training checkpoint whose
``model_state_dict`` holds that network's weights; medfoundry reads it with its own safe loader
(``weights_only``, the wrapper unwrapped) and checks every parameter is present, where ``medim`` loads with
``strict=False`` and arbitrary unpickling.

:func:`decode` is the reference's inference step (SAM-Med3D's ``utils/infer_utils.sam_model_infer``): the
image embedding of a ``(1, 1, 128, 128, 128)`` z-normalised crop, point prompts in crop voxel indices in the
crop tensor's own axis order, the previous low-resolution logits (zeros at first) as the mask prompt, a single
mask (``multimask_output=False``), logits upsampled trilinearly to the crop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError, WeightsError

#: medim's SAM-Med3D defaults (the published turbo checkpoint)
DEFAULT_CONFIG: dict[str, Any] = {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
                                  "encoder_global_attn_indexes": [2, 5, 8, 11], "prompt_embed_dim": 384,
                                  "image_size": 128, "vit_patch_size": 16}


def build_sam_med3d(config: Mapping[str, Any] | None = None) -> Any:
    """An untrained SAM-Med3D from ``medim`` (``DEFAULT_CONFIG`` updated with ``config``).

    Raises:
        WeightsError: ``medim`` is not installed (``pip install 'medfoundry[sam-med3d]'``).
    """
    try:
        from medim.models.sam_med3d import build_sam3D_vit_b_ori
    except ImportError as exc:
        raise WeightsError("SAM-Med3D needs its reference package: pip install 'medfoundry[sam-med3d]' "
                           "(or pip install medim)") from exc
    merged = {**DEFAULT_CONFIG, **dict(config or {})}
    return build_sam3D_vit_b_ori(pretrained=False, **merged)


def load_sam_med3d(weights: Any, config: Mapping[str, Any] | None = None, name: str = "sam-med3d") -> Any:
    """Build SAM-Med3D and load a checkpoint (``{"model_state_dict": ...}`` as published, or a bare state
    dict), float32, eval mode.

    Raises:
        WeightsError: parameters missing or unexpected, or of the wrong shape.
    """
    from medfoundry.registry.loading import load_state_dict

    model = build_sam_med3d(config)
    state = load_state_dict(weights)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise WeightsError(f"{name}: the weights do not fit SAM-Med3D: {str(exc)[:300]}") from exc
    if missing or unexpected:
        raise WeightsError(f"{name}: the weights do not fit SAM-Med3D: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model.float().eval()


@torch.no_grad()
def decode(model: Any, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
           previous: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt round on an image embedding.

    Args:
        model: a SAM-Med3D network.
        embedding: ``model.image_encoder(crop)``, ``(1, C, 8, 8, 8)``.
        points: ``(1, N, 3)`` float voxel indices in the crop, in the crop tensor's axis order.
        labels: ``(1, N)`` int, 1 foreground, 0 background.
        previous: ``(1, 1, 32, 32, 32)`` low-resolution logits of the previous round (zeros when None).
    Returns:
        ``(low, full)``: low-resolution logits ``(1, 1, 32, 32, 32)`` and logits upsampled to the crop
        ``(1, 1, 128, 128, 128)``.
    Raises:
        InputContractError: prompts of the wrong shape, or labels other than 0/1.
    """
    size = int(model.image_encoder.img_size)
    if points.ndim != 3 or points.shape[0] != 1 or points.shape[2] != 3 or labels.shape != points.shape[:2]:
        raise InputContractError(f"points must be (1, N, 3) with labels (1, N), got {tuple(points.shape)} and "
                                 f"{tuple(labels.shape)}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise InputContractError("point labels must be 1 (foreground) or 0 (background)")
    if previous is None:
        previous = torch.zeros(1, 1, size // 4, size // 4, size // 4, device=embedding.device)
    sparse, dense = model.prompt_encoder(points=[points.float(), labels.long()], boxes=None, masks=previous)
    low, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
    return low, F.interpolate(low, size=(size, size, size), mode="trilinear", align_corners=False)
