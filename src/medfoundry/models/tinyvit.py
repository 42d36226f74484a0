"""LiteMedSAM's image encoder: the TinyViT-5M variant of MobileSAM, adapted by LiteMedSAM to a 256-pixel input
with a (B, 256, 64, 64) embedding — built from timm's TinyViT blocks, with LiteMedSAM's module names so its
published checkpoint (``lite_medsam.pth``) loads key for key after :func:`litemedsam_to_timm_names`.

Layout (facts from the LiteMedSAM repository, github.com/bowang-lab/MedSAM, branch LiteMedSAM):
- ``patch_embed.seq``: 1×1 conv–BN, GELU, 1×1 conv–BN (3 → 32 → 64 channels; no downsampling);
- ``layers.0``: two MBConv blocks at 256², then patch merging to 128 channels at 128²;
- ``layers.1``: two TinyViT blocks (4 heads, window 7), merging to 160 channels at 64²;
- ``layers.2``: six TinyViT blocks (5 heads, window 14), merging to 320 channels *without* downsampling;
- ``layers.3``: two TinyViT blocks (10 heads, window 7) at 64²;
- ``neck``: 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d → 256 channels, as SAM's ViT neck.

:meth:`LiteMedSamEncoder.accelerate` (called by ``sam_fast.accelerate_encoder``) runs every convolution–batch-norm
pair as one convolution and keeps the convolutional stages in channels-last layout (what oneDNN's CPU kernels
prefer): the same float32 result to ~1e-5 and about 1.3× faster on one CPU core; state-dict keys unchanged
(measured by benchmarks/litemedsam_speed.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.errors import InputContractError

EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOWS = (7, 7, 14, 7)


class _Stage(nn.Module):
    """``blocks`` then an optional ``downsample`` (module names as in the published checkpoints)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class FusedConvNorm(nn.Module):
    """timm's ``ConvNorm`` (``conv`` + ``bn``, same parameters and keys) evaluated as one convolution in eval
    mode; the folded weights are recomputed from the parameters on each call, so they never go stale (training
    mode runs the two modules as they are)."""

    def __init__(self, conv_norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = conv_norm.conv, conv_norm.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.conv(x))
        c, bn = self.conv, self.bn
        scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
        weight = (c.weight.float() * scale[:, None, None, None]).to(x.dtype)
        bias = (bn.bias.float() - bn.running_mean.float() * scale).to(x.dtype)
        return F.conv2d(x, weight.contiguous(memory_format=torch.channels_last), bias, c.stride, c.padding,
                        c.dilation, c.groups)


class LiteMedSamEncoder(nn.Module):
    """(B, 3, 256, 256) → (B, 256, 64, 64). Inputs are LiteMedSAM's min–max scaled [0, 1] pixels."""

    def __init__(self, img_size: int = 256) -> None:
        super().__init__()
        from segment_anything.modeling.common import LayerNorm2d
        from timm.models.tiny_vit import ConvNorm, MBConv, PatchMerging, TinyVitBlock

        if img_size % 4:
            raise InputContractError(f"TinyViT input size must be a multiple of 4, got {img_size}")
        self.img_size = img_size
        d = EMBED_DIMS
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvNorm(3, d[0] // 2, 1, 1, 0), nn.GELU(),
                                             ConvNorm(d[0] // 2, d[0], 1, 1, 0))
        stages = [_Stage([MBConv(d[0], d[0], 4.0, nn.GELU, 0.0) for _ in range(DEPTHS[0])],
                         PatchMerging(d[0], d[1], nn.GELU))]
        for i in (1, 2, 3):
            blocks = [TinyVitBlock(d[i], NUM_HEADS[i], WINDOWS[i], mlp_ratio=4.0, local_conv_size=3)
                      for _ in range(DEPTHS[i])]
            merge = PatchMerging(d[i], d[i + 1], nn.GELU) if i < 3 else None
            if merge is not None and d[i + 1] == 320:  # LiteMedSAM keeps the last merge at stride 1
                merge.conv2.conv.stride = (1, 1)
            stages.append(_Stage(blocks, merge))
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(nn.Conv2d(d[-1], 256, 1, bias=False), LayerNorm2d(256),
                                  nn.Conv2d(256, 256, 3, padding=1, bias=False), LayerNorm2d(256))
        self.channels_last = False

    def accelerate(self) -> LiteMedSamEncoder:
        """Fold batch norms into convolutions (:class:`FusedConvNorm`) and run the convolutional stages in
        channels-last layout; in place, same parameters and keys, same result to float32 rounding."""
        from timm.models.tiny_vit import ConvNorm

        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, ConvNorm):
                    setattr(module, name, FusedConvNorm(child))
        self.channels_last = True
        return self

    def float32_stem(self) -> nn.Module:
        """The part that stays float32 when the encoder runs in bfloat16: the patch embedding (two 1×1
        convolutions on the full-resolution pixels). Measured on LiteMedSAM's real weights and 6 Kvasir frames
        (1 thread, CPU seconds, AMD EPYC with native bf16): all-bf16 masks agree with float32 at IoU ≥ 0.9894,
        with this stem in float32 at IoU ≥ 0.9931, for 6 % more encoder time (1.39 s vs 1.30 s; float32 2.25 s)."""
        return self.patch_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed.seq(x)
        x = x.to(self.neck[0].weight.dtype)  # a float32 stem hands on to a bfloat16 body (a no-op otherwise)
        for blk in self.layers[0].blocks:
            x = blk(x)
        x = self.layers[0].downsample(x)  # (B, C, H, W)
        for stage in self.layers[1:]:
            x = x.permute(0, 2, 3, 1)  # TinyViT blocks take (B, H, W, C)
            for blk in stage.blocks:
                x = blk(x)
            x = x.permute(0, 3, 1, 2)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return self.neck(x).contiguous()


def litemedsam_to_timm_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LiteMedSAM checkpoint keys → this module's: its ``Conv2d_BN`` calls the convolution ``c``, timm's
    ``ConvNorm`` calls it ``conv``; everything else has the same name and shape."""
    out = {}
    for key, value in state.items():
        if key.startswith("image_encoder.") and ".c." in key:
            key = key.replace(".c.", ".conv.")
        out[key] = value
    return out


def is_litemedsam(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("image_encoder.patch_embed.seq.") and ".c." in k for k in state)
