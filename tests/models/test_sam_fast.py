"""Fused attention equals segment_anything's attention; the bf16 segmenter stays close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundry.io import MedImage
from medfoundry.models.sam import build_sam
from medfoundry.models.sam_fast import SdpaAttention, accelerate_encoder
from medfoundry.predict.segment import load_segmenter
from medfoundry.registry import ModelRecord

pytest.importorskip("segment_anything")


def test_sdpa_attention_equals_segment_anything_in_windowed_and_global_blocks() -> None:
    torch.manual_seed(0)
    encoder = build_sam({"encoder": "vit_test", "image_size": 256}).image_encoder.eval()
    with torch.no_grad():
        for blk in encoder.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.5)
            blk.attn.rel_pos_w.normal_(0, 0.5)
        x = torch.randn(1, 3, 256, 256)
        reference = encoder(x)
        fast = accelerate_encoder(encoder)
        assert all(isinstance(b.attn, SdpaAttention) for b in fast.blocks)
        assert torch.allclose(fast(x), reference, atol=1e-4)
        assert set(fast.state_dict()) == set(build_sam({"encoder": "vit_test", "image_size": 256})
                                             .image_encoder.state_dict())


def test_bf16_segmenter_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = build_sam({"encoder": "vit_test", "image_size": 256})
    record = ModelRecord.from_dict({
        "name": "tiny", "arch": "sam", "arch_config": {"encoder": "vit_test", "image_size": 256},
        "family": "VPM-generalist", "tasks": ["segmentation-2d"], "modalities": ["CT"], "license": "MIT",
        "commercial_use": True, "paper": "t", "training_data": "t",
        "preprocess": {"image_size": 256, "resize": "longest_pad", "channels": 3, "intensity": "uint8", "scale": 255.0,
                       "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}})
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (150, 200, 3), dtype=np.uint8)
    arr[50:110, 60:140] = 220
    image = MedImage(array=arr, spacing=(1.0, 1.0), photometric="RGB")
    fp32 = load_segmenter(record, model.state_dict())
    bf16 = load_segmenter(record, model.state_dict()).set_precision("bf16")
    fp32.set_image(image)
    bf16.set_image(image)
    emb32, emb16 = fp32._embedding(None)[0].embedding, bf16._embedding(None)[0].embedding
    cos = torch.nn.functional.cosine_similarity(emb32.flatten(), emb16.flatten(), dim=0)
    assert emb16.dtype == torch.float32 and cos > 0.999
    with pytest.raises(Exception, match="fp32"):
        bf16.set_precision("fp32")


def test_pooled_lite_encoder_shares_weights_and_halves_the_grid() -> None:
    torch.manual_seed(0)
    full = build_sam({"encoder": "lite", "image_size": 256, "backbone": "resnet10t", "embed_stride": 4}).eval()
    pooled = build_sam({"encoder": "lite", "image_size": 256, "backbone": "resnet10t", "embed_stride": 8,
                        "embed_pool": 2}).eval()
    pooled.load_state_dict(full.state_dict(), strict=True)  # same parameters: pooling has none
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a, b = full.embed(x), pooled.embed(x)
        assert tuple(b.shape) == (1, 256, 32, 32)
        assert torch.allclose(torch.nn.functional.avg_pool2d(a, 2), b, atol=1e-5)
        logits, _ = pooled.decode(b, boxes=torch.tensor([[40.0, 40.0, 200.0, 200.0]]))
    assert tuple(logits.shape) == (1, 1, 128, 128)
    with pytest.raises(Exception, match="embed_stride"):
        build_sam({"encoder": "lite", "image_size": 256, "embed_stride": 4, "embed_pool": 2})


def test_fast_prompts_on_the_embedded_segmenter() -> None:
    from medfoundry.predict.segment import open_segmenter

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (200, 240, 3), dtype=np.uint8)
    arr[60:140, 70:170] = [230, 120, 110]
    image = MedImage(array=arr, spacing=(1.0, 1.0), photometric="RGB")
    box = np.array([[60.0, 50.0, 180.0, 150.0]])
    slow, fast = open_segmenter("medfoundry-sam-lite"), open_segmenter("medfoundry-sam-lite", embed_pool=2)
    assert fast.model.config.embed_stride == 8 and fast.model.prompt_encoder.image_embedding_size == (32, 32)
    slow.set_image(image)
    fast.set_image(image)
    a, b = slow.predict(boxes=box).best()[0], fast.predict(boxes=box).best()[0]
    assert b.shape == a.shape and (a & b).sum() / max((a | b).sum(), 1) > 0.8
    with pytest.raises(Exception, match="lite"):
        build_sam({"encoder": "vit_test", "image_size": 256}).set_embed_pool(2)


def test_fused_decoder_equals_segment_anything_and_bf16_stays_close() -> None:
    from segment_anything.modeling.transformer import Attention

    from medfoundry.models.sam_fast import SdpaDecoderAttention, accelerate_decoder

    torch.manual_seed(0)
    model = build_sam({"encoder": "vit_test", "image_size": 256}).eval()
    keys = set(model.state_dict())
    emb = torch.randn(1, 256, 16, 16)
    prompts = {"boxes": torch.tensor([[30.0, 40.0, 200.0, 220.0]]),
               "points": (torch.tensor([[[100.0, 120.0], [20.0, 20.0]]]), torch.tensor([[1, 0]]))}
    with torch.no_grad():
        ref_logits, ref_iou = model.decode(emb, multimask=True, reference=True, **prompts)
        accelerate_decoder(model.mask_decoder)
        assert not any(isinstance(m, Attention) for m in model.mask_decoder.modules())
        assert sum(isinstance(m, SdpaDecoderAttention) for m in model.mask_decoder.modules()) == 7
        assert set(model.state_dict()) == keys  # same checkpoint keys
        logits, iou = model.decode(emb, multimask=True, **prompts)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)
        accelerate_decoder(model.mask_decoder, bf16=True)
        logits16, _ = model.decode(emb, multimask=True, **prompts)
    assert logits16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(logits16.flatten(), ref_logits.flatten(), dim=0)
    assert cos > 0.999


@pytest.mark.parametrize("queries,keys", [(4096, 7), (7, 4096), (20, 20), (300, 16)])
def test_attention_equals_sdpa_for_every_shape(queries: int, keys: int) -> None:
    from medfoundry.models.sam_fast import attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, queries, 16), torch.randn(2, 8, keys, 16), torch.randn(2, 8, keys, 16)
    torch.testing.assert_close(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)
