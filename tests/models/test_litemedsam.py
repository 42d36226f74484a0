"""LiteMedSAM's layout: its checkpoint names load strictly, the TinyViT stages have the published resolutions,
and the whole model segments like segment_anything's SamPredictor built around the same modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundry.models.sam import build_sam
from medfoundry.models.sam_formats import to_segment_anything
from medfoundry.models.tinyvit import is_litemedsam
from medfoundry.predict.segment import load_segmenter
from medfoundry.registry import ModelRecord

segment_anything = pytest.importorskip("segment_anything")

# names and shapes of lite_medsam.pth tensors (LiteMedSAM's Conv2d_BN calls its convolution "c")
PUBLISHED = {
    "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 1, 1),
    "image_encoder.patch_embed.seq.2.bn.running_var": (64,),
    "image_encoder.layers.0.blocks.1.conv2.c.weight": (256, 1, 3, 3),
    "image_encoder.layers.0.downsample.conv3.c.weight": (128, 128, 1, 1),
    "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
    "image_encoder.layers.1.blocks.1.local_conv.c.weight": (128, 1, 3, 3),
    "image_encoder.layers.2.blocks.5.attn.attention_biases": (5, 196),
    "image_encoder.layers.2.blocks.5.mlp.fc1.weight": (640, 160),
    "image_encoder.layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
    "image_encoder.layers.3.blocks.1.attn.qkv.weight": (960, 320),
    "image_encoder.neck.0.weight": (256, 320, 1, 1),
    "image_encoder.neck.3.bias": (256,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_sam({"encoder": "tinyvit", "image_size": 256}).eval()
    with torch.no_grad():  # BN statistics and attention biases away from their neutral initial values
        for name, t in m.state_dict().items():
            if t.is_floating_point() and ("bn." in name or "attention_biases" in name):
                t.add_(torch.rand_like(t) * 0.1)
    return m


def _as_published(state: dict) -> dict:
    return {k.replace(".conv.", ".c.") if k.startswith("image_encoder.") else k: v for k, v in state.items()}


def test_published_names_and_shapes_load_strictly(model) -> None:
    published = _as_published(model.state_dict())
    assert is_litemedsam(published)
    for key, shape in PUBLISHED.items():
        assert tuple(published[key].shape) == shape, key
    fresh = build_sam({"encoder": "tinyvit", "image_size": 256})
    fresh.load_state_dict(to_segment_anything(published), strict=True)
    assert fresh.config.embed_stride == 4


def test_stage_resolutions_match_litemedsam(model) -> None:
    shapes = []
    enc = model.image_encoder
    hooks = [enc.patch_embed.seq.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))]
    hooks += [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
              for s in (enc.layers[0].downsample, enc.layers[1].downsample, enc.layers[2].downsample)]
    with torch.no_grad():
        out = model.embed(torch.randn(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    assert shapes == [(64, 256, 256), (128, 128, 128), (160, 64, 64), (320, 64, 64)]
    assert tuple(out.shape) == (1, 256, 64, 64)


def test_masks_match_sam_predictor(model, agrees_with_sam_predictor) -> None:
    pre = {"image_size": 256, "resize": "longest_pad", "channels": 3, "intensity": "uint8", "scale": 255.0,
           "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "interpolation": "bilinear"}
    record = ModelRecord.from_dict({"name": "tiny-lite", "arch": "sam", "family": "VPM-adaptation",
                                    "arch_config": {"encoder": "tinyvit", "image_size": 256},
                                    "tasks": ["segmentation-2d"], "modalities": ["CT"], "license": "MIT",
                                    "commercial_use": True, "paper": "t", "training_data": "t", "preprocess": pre})
    ours = load_segmenter(record, _as_published(model.state_dict()))
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (120, 160, 3), dtype=np.uint8)
    arr[40:90, 50:120] = [220, 180, 160]
    agrees_with_sam_predictor(ours, model, arr, [[45.0, 35.0, 125.0, 95.0], [10.0, 10.0, 60.0, 50.0]])
