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
    emb32 = fp32._embedding(None)[0] if fp32.set_image(image) is None else None
    emb16 = bf16._embedding(None)[0] if bf16.set_image(image) is None else None
    cos = torch.nn.functional.cosine_similarity(emb32.flatten(), emb16.flatten(), dim=0)
    assert emb16.dtype == torch.float32 and cos > 0.999
    with pytest.raises(Exception, match="fp32"):
        bf16.set_precision("fp32")
