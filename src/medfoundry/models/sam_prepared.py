"""SAM's mask decoder forward, written once: the image side computed apart, so it can be kept per image.

segment_anything's ``MaskDecoder`` repeats the image embedding for every prompt and recomputes, for each one,
work that does not depend on the prompt: the dense positional encoding (sin/cos of a grid), the embedding plus
the dense prompt embedding ("no mask" when there is no mask input), and in the first two-way block the
image-side projections of both cross-attentions (keys and values of tokens→image, queries of image→token),
because the image tokens are changed only at the end of that block. :func:`prepare_image_parts` computes those
(for one image, or for a batch of images with their own dense prompts) and :func:`decode_prepared` runs the
rest. Every medfoundry decoding goes through these two functions — interactive prompts
(``SamModel.decode``, where a :class:`PreparedEmbedding` keeps the parts of an image without mask input, so
further prompts skip them) and training batches (``SamModel.decode_batch``). Same weights, same arithmetic:
tests/models/test_sam_decoder.py compares them with segment_anything's ``MaskDecoder.forward`` to float32
rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.models.sam_fast import attention


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) → (B, heads, N, C / heads)."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, c) → (B, N, heads · c)."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


@dataclass
class DecoderImageParts:
    """The prompt-independent tensors of B' images for one mask decoder (all token-major; B' = 1 for one image
    shared by every prompt, or the batch size).

    ``keys`` (B', N, C): image embedding + dense prompt embedding; ``pe`` (1, N, C): dense positional
    encoding; ``k0``/``v0`` (B', heads, N, c): first block's tokens→image keys and values; ``q0``
    (B', heads, N, c): its image→tokens queries; ``grid`` (h, w) with N = h · w.
    """

    keys: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor
    v0: torch.Tensor
    q0: torch.Tensor
    grid: tuple[int, int]


def prepare_image_parts(prompt_encoder: nn.Module, decoder: nn.Module, embedding: torch.Tensor,
                        dense: torch.Tensor | None = None) -> DecoderImageParts:
    """Compute :class:`DecoderImageParts` in the decoder's dtype.

    Args:
        embedding: (B', C, h, w) image embeddings (B' = 1: one image for all prompts).
        dense: (B, C, h, w) dense prompt embeddings from the prompt encoder (mask inputs), B = B' or B' = 1;
            None: the "no mask" embedding.
    """
    if embedding.ndim != 4:
        raise ValueError(f"expected image embeddings (B, C, h, w), got {tuple(embedding.shape)}")
    dtype = decoder.iou_token.weight.dtype
    h, w = embedding.shape[-2:]
    pe = dense_positional_encoding(prompt_encoder, dtype)
    if pe.shape[1] != h * w:
        raise ValueError(f"embedding grid {(h, w)} does not match the prompt encoder's "
                         f"{tuple(prompt_encoder.image_embedding_size)}")
    if dense is None:
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    keys = (embedding + dense).to(dtype).flatten(2).transpose(1, 2).contiguous()
    block = decoder.transformer.layers[0]
    t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    keys_pe = keys + pe
    return DecoderImageParts(
        keys=keys, pe=pe,
        k0=_heads(t2i.k_proj(keys_pe), t2i.num_heads), v0=_heads(t2i.v_proj(keys), t2i.num_heads),
        q0=_heads(i2t.q_proj(keys_pe), i2t.num_heads), grid=(h, w))


def dense_positional_encoding(prompt_encoder: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The prompt encoder's dense positional encoding as (1, h·w, C) in ``dtype``, computed once per encoder,
    grid, dtype and device and shared by every prepared image (recomputed if its frequencies change)."""
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    key = (dtype, gaussian.device, tuple(prompt_encoder.image_embedding_size), gaussian._version,
           gaussian.data_ptr(), torch.is_inference_mode_enabled())  # inference tensors stay out of training
    cache = prompt_encoder.__dict__.setdefault("_medfoundry_dense_pe", {})
    if key not in cache:
        cache.clear()
        with torch.autocast(gaussian.device.type, enabled=False), torch.no_grad():  # full precision, no graph
            cache[key] = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2).contiguous()
    return cache[key]


class PreparedEmbedding:
    """An image embedding (1, C, h, w) that remembers its :class:`DecoderImageParts` per decoder.

    Pass it to ``SamModel.decode`` instead of the tensor; prompts without a mask input then skip the
    prompt-independent work. Parts are rebuilt if the decoder's dtype changes.
    """

    def __init__(self, embedding: torch.Tensor) -> None:
        self.embedding = embedding
        self._parts: dict[tuple[int, torch.dtype], DecoderImageParts] = {}

    @property
    def shape(self) -> torch.Size:
        return self.embedding.shape

    def release(self) -> None:
        """Drop the prepared parts (about 2.5× the embedding's memory); they are rebuilt when needed."""
        self._parts.clear()

    def parts(self, prompt_encoder: nn.Module, decoder: nn.Module) -> DecoderImageParts:
        key = (id(decoder), decoder.iou_token.weight.dtype)
        if key not in self._parts:
            self._parts[key] = prepare_image_parts(prompt_encoder, decoder, self.embedding)
        return self._parts[key]


def decode_prepared(decoder: nn.Module, parts: DecoderImageParts, sparse: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """segment_anything's ``MaskDecoder.predict_masks`` for B prompts on prepared images: one image shared by
    all prompts (parts of batch 1) or one image per prompt (parts of batch B).

    Args:
        sparse: (B, T, C) sparse prompt embeddings, in the decoder's dtype.
    Returns:
        mask logits (B, 1 + multimask, 4h, 4w) and predicted IoU (B, 1 + multimask), all outputs (the caller
        picks the single or the multimask ones, as ``MaskDecoder.forward`` does).
    """
    b = sparse.shape[0]
    transformer = decoder.transformer
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)

    # first two-way block, with the image side precomputed
    block = transformer.layers[0]
    queries, query_pe = tokens, tokens
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    t2i = block.cross_attn_token_to_image
    q = _heads(t2i.q_proj(queries + query_pe), t2i.num_heads)
    if parts.keys.shape[0] not in (1, b):
        raise ValueError(f"{b} prompts on {parts.keys.shape[0]} prepared images: give one image or one per prompt")
    attn = attention(q, parts.k0.expand(b, -1, -1, -1), parts.v0.expand(b, -1, -1, -1))
    queries = block.norm2(queries + t2i.out_proj(_merge(attn)))
    queries = block.norm3(queries + block.mlp(queries))
    i2t = block.cross_attn_image_to_token
    k = _heads(i2t.k_proj(queries + query_pe), i2t.num_heads)
    v = _heads(i2t.v_proj(queries), i2t.num_heads)
    attn = attention(parts.q0.expand(b, -1, -1, -1), k, v)
    keys = block.norm4(parts.keys + i2t.out_proj(_merge(attn)))  # (B, N, C), broadcast from one image

    for block in transformer.layers[1:]:
        queries, keys = block(queries=queries, keys=keys, query_pe=query_pe, key_pe=parts.pe)
    q = queries + query_pe
    attn_out = transformer.final_attn_token_to_image(q=q, k=keys + parts.pe, v=keys)
    queries = transformer.norm_final_attn(queries + attn_out)

    mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens, :]
    hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    iou = decoder.iou_prediction_head(queries[:, 0, :])
    return upscaled_masks(decoder.output_upscaling, keys, parts.grid, hyper), iou


def _is_sam_upscaling(upscaling: nn.Module) -> bool:
    """segment_anything's layout: ConvTranspose(k=2, s=2), LayerNorm2d, activation, ConvTranspose(k=2, s=2),
    activation."""
    layers = list(upscaling) if isinstance(upscaling, nn.Sequential) else []
    return (len(layers) == 5 and all(isinstance(layers[i], nn.ConvTranspose2d) and layers[i].kernel_size == (2, 2)
                                     and layers[i].stride == (2, 2) and layers[i].padding == (0, 0)
                                     for i in (0, 3))
            and type(layers[1]).__name__ == "LayerNorm2d")


def _subpixel_linear(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A 2×2 / stride-2 transposed convolution on channels-last features (..., Cin) as one matrix product:
    (..., Cin) → (..., 2, 2, Cout), the 2 × 2 output pixels of each input pixel (row offset, column offset)."""
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # (Cin, (a, b, Cout))
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    return F.linear(x, weight.t(), bias).unflatten(-1, (2, 2, c_out))


def upscaled_masks(upscaling: nn.Module, keys: torch.Tensor, grid: tuple[int, int], hyper: torch.Tensor,
                   subpixel: bool | None = None) -> torch.Tensor:
    """``output_upscaling`` of the image tokens, then the product with the hypernetwork outputs.

    Args:
        keys: (B, h·w, C) image tokens after the transformer; hyper: (B, M, C'') one row per mask.
    Returns:
        (B, M, 4h, 4w) mask logits. In bfloat16, segment_anything's upscaling (two 2×2 / stride-2
        transposed convolutions) runs as matrix products on channels-last sub-pixel blocks, and the pixels are
        put in place only for the M mask planes, at the end (half the time of the convolution modules on a
        2-core AVX512-BF16 CPU; in float32 oneDNN's transposed convolution was faster, so it is kept there).
        Any other upscaling runs as its module. ``subpixel`` forces the choice (None: by dtype).
    """
    b, h, w = keys.shape[0], *grid
    if subpixel is None:
        subpixel = keys.dtype != torch.float32
    if not subpixel or not _is_sam_upscaling(upscaling):
        upscaled = upscaling(keys.view(b, h, w, -1).permute(0, 3, 1, 2))
        return torch.einsum("bmc,bchw->bmhw", hyper, upscaled)
    conv1, norm, act1, conv2, act2 = upscaling
    x = _subpixel_linear(keys.view(b, h, w, -1), conv1)  # (B, h, w, 2, 2, C')
    x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = act2(_subpixel_linear(x, conv2))  # (B, h, w, a, b, a2, b2, C'')
    masks = (x.reshape(b, -1, x.shape[-1]) @ hyper.transpose(1, 2)).view(b, h, w, 2, 2, 2, 2, -1)
    # output row 4i + 2a + a2, column 4j + 2b + b2
    return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, -1, 4 * h, 4 * w)
