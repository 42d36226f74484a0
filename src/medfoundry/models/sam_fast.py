"""Faster CPU/GPU execution of SAM-family models, same weights and same state-dict keys.

- :class:`SdpaAttention` computes segment_anything's ViT attention (with its decomposed relative-position
  bias) through ``torch.nn.functional.scaled_dot_product_attention``, which fuses scaling, bias, softmax and
  the value product (fused CPU/GPU kernels instead of a materialised float32 softmax).
- :func:`accelerate_encoder` swaps those in and (``bf16=True``) keeps the encoder's weights in bfloat16,
  which CPUs with AVX512-BF16/AMX and all recent GPUs run natively. Embeddings are returned as float32.
- :class:`SdpaDecoderAttention` and :func:`accelerate_decoder` do the same for the mask decoder's two-way
  transformer, the part that runs for every further prompt.

Measured by ``benchmarks/sam_vit_b_speed.py`` and ``benchmarks/seg_kvasir.py --decoder-precision`` (results
in ``benchmarks/results/``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SdpaAttention(nn.Module):
    """segment_anything's ViT ``Attention`` (same parameters: ``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``)
    evaluated with ``scaled_dot_product_attention``; input and output (B, H, W, C)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv, self.proj = attn.qkv, attn.proj
        self.use_rel_pos = attn.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h, self.rel_pos_w = attn.rel_pos_h, attn.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from segment_anything.modeling.image_encoder import get_rel_pos

        b, h, w, _ = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nH, N, c)
        bias = None
        if self.use_rel_pos:
            rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
            rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
            r_q = q.reshape(b * heads, h, w, -1)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
            bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale: head_dim ** -0.5, as SAM's
        return self.proj(out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


class _Bf16Encoder(nn.Module):
    """Runs a wrapped encoder in bfloat16 and hands back float32 embeddings. Encoders that declare a
    ``float32_stem`` keep that submodule (their first layers, on the raw pixels) in float32 and cast after it."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.inner = encoder.to(torch.bfloat16)
        stem = getattr(encoder, "float32_stem", None)
        self.stem_fp32 = stem is not None
        if stem is not None:
            stem().float()
        self.img_size = getattr(encoder, "img_size", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float() if self.stem_fp32 else x.to(torch.bfloat16)).float()


def accelerate_encoder(encoder: nn.Module, bf16: bool = False) -> nn.Module:
    """Use :class:`SdpaAttention` in every ViT block of a segment_anything ``ImageEncoderViT`` (in place), fold
    LiteMedSAM TinyViT's batch norms (:meth:`~medfoundry.models.tinyvit.LiteMedSamEncoder.accelerate`) and,
    with ``bf16``, wrap it to run in bfloat16. Other encoders are returned unchanged (bf16 still applies)."""
    for block in getattr(encoder, "blocks", []):
        if hasattr(block, "attn") and hasattr(block.attn, "qkv") and not isinstance(block.attn, SdpaAttention):
            block.attn = SdpaAttention(block.attn)
    inner = getattr(encoder, "inner", encoder)
    if hasattr(inner, "accelerate") and not getattr(inner, "channels_last", True):
        inner.accelerate()  # LiteMedSAM's TinyViT: batch norms folded, channels-last convolutions
    if bf16 and isinstance(encoder, _Bf16Encoder):
        return encoder
    return _Bf16Encoder(encoder) if bf16 else encoder


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √c) v for (B, heads, N, c) tensors.

    Many queries on a few keys (the decoder's image→token attention: 4096 image tokens on ~7 prompt tokens)
    run keys-first: scores (B, heads, keys, queries) with the softmax over the short keys axis, which CPU
    kernels vectorise along the long queries axis (0.16–0.2 ms against 1.1–1.3 ms for the fused kernel, whose
    softmax runs along rows of 7; same arithmetic). Everything else goes to ``scaled_dot_product_attention``.
    """
    if k.shape[-2] <= 16 < q.shape[-2]:
        scores = (k * q.shape[-1] ** -0.5) @ q.transpose(-1, -2)  # (B, heads, keys, queries)
        return torch.softmax(scores, dim=-2).transpose(-1, -2) @ v
    return F.scaled_dot_product_attention(q, k, v)  # scale: head_dim ** -0.5, as segment_anything's


class SdpaDecoderAttention(nn.Module):
    """segment_anything's two-way-transformer ``Attention`` (same parameters: ``q_proj``, ``k_proj``,
    ``v_proj``, ``out_proj``, with its internal downsampling) through ``scaled_dot_product_attention``;
    inputs (B, N, C)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, nq, _ = q.shape
        nk, heads = k.shape[1], self.num_heads
        q = self.q_proj(q).view(b, nq, heads, -1).transpose(1, 2)
        k = self.k_proj(k).view(b, nk, heads, -1).transpose(1, 2)
        v = self.v_proj(v).view(b, nk, heads, -1).transpose(1, 2)
        return self.out_proj(attention(q, k, v).transpose(1, 2).reshape(b, nq, -1))


def accelerate_decoder(decoder: nn.Module, bf16: bool = False) -> nn.Module:
    """Use :class:`SdpaDecoderAttention` in a segment_anything ``MaskDecoder`` (in place; state-dict keys are
    unchanged) and, with ``bf16``, keep its weights in bfloat16 (``SamModel.decode`` casts its inputs to the
    decoder's dtype and returns float32)."""
    from segment_anything.modeling.transformer import Attention

    for module in list(decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Attention):
                setattr(module, name, SdpaDecoderAttention(child))
    return decoder.to(torch.bfloat16) if bf16 else decoder


def native_bf16() -> bool:
    """Whether this machine runs bfloat16 matrix products natively (CUDA, or a CPU with AVX512-BF16/AMX or
    Arm BF16, see :mod:`medfoundry.models.hardware`); elsewhere bfloat16 is emulated and slower than float32.
    Where the CPU's flags cannot be read, oneDNN's own answer is used."""
    from medfoundry.models.hardware import cpu_features

    features = cpu_features()
    if features.native_bf16 or features.flags:
        return features.native_bf16
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
