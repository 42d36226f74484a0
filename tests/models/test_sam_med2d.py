"""SAM-Med2D's adapter layout: its checkpoint keys load strictly; with neutral adapters the model is
segment_anything's (masks equal SamPredictor's); with trained-looking adapters each block equals an
independent functional evaluation of the published adapter equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfoundry.models.sam import build_sam
from medfoundry.predict.segment import load_segmenter
from medfoundry.registry import ModelRecord

segment_anything = pytest.importorskip("segment_anything")

PRE = {"image_size": 256, "resize": "squash", "channels": 3, "intensity": "uint8", "scale": 255.0,
       "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "interpolation": "nearest"}
DIM, HIDDEN = 64, 16  # vit_test width; SAM-Med2D's adapter hidden size is a quarter of the width


def _adapter_keys(depth: int = 2) -> dict[str, tuple[int, ...]]:
    """The adapter tensors of a SAM-Med2D checkpoint (names and shapes of its published layout)."""
    keys = {}
    for i in range(depth):
        p = f"image_encoder.blocks.{i}.Adapter."
        keys |= {p + "norm.weight": (DIM,), p + "norm.bias": (DIM,), p + "channel.0.weight": (HIDDEN, DIM),
                 p + "channel.2.weight": (DIM, HIDDEN), p + "spatial.0.weight": (DIM, DIM, 3, 3),
                 p + "spatial.2.weight": (DIM, DIM, 4, 4)}
    return keys


def test_checkpoint_layout_loads_strictly() -> None:
    plain = build_sam({"encoder": "vit_test", "image_size": 256}).state_dict()
    adapted = build_sam({"encoder": "vit_test", "image_size": 256, "adapter": True})
    expected = _adapter_keys()
    extra = {k: tuple(v.shape) for k, v in adapted.state_dict().items() if k not in plain}
    assert extra == expected
    state = {**plain, **{k: torch.randn(s) for k, s in expected.items()}}
    adapted.load_state_dict(state, strict=True)


def test_neutral_adapters_give_segment_anythings_masks(agrees_with_sam_predictor) -> None:
    torch.manual_seed(0)
    model = build_sam({"encoder": "vit_test", "image_size": 256, "adapter": True}).eval()
    with torch.no_grad():
        for blk in model.image_encoder.blocks:  # spatial branch off and LayerNorm scale 0: adapter output 0
            blk.Adapter.spatial[0].weight.zero_()
            blk.Adapter.norm.weight.zero_()
            blk.Adapter.norm.bias.zero_()
    record = ModelRecord.from_dict({"name": "tiny-med2d", "arch": "sam", "family": "VPM-adaptation",
                                    "arch_config": {"encoder": "vit_test", "image_size": 256, "adapter": True},
                                    "tasks": ["segmentation-2d"], "modalities": ["CT"], "license": "MIT",
                                    "commercial_use": True, "paper": "t", "training_data": "t",
                                    "preprocess": {**PRE, "resize": "longest_pad", "interpolation": "bilinear"}})
    ours = load_segmenter(record, model.state_dict())
    plain = build_sam({"encoder": "vit_test", "image_size": 256}).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".Adapter." not in k})
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (150, 200, 3), dtype=np.uint8)
    arr[50:110, 60:140] = [220, 180, 160]
    agrees_with_sam_predictor(ours, plain, arr, [[55.0, 45.0, 145.0, 115.0]], require_mask=True)


def test_adapter_block_equals_the_published_equations() -> None:
    torch.manual_seed(1)
    model = build_sam({"encoder": "vit_test", "image_size": 256, "adapter": True}).eval()
    block = model.image_encoder.blocks[1]  # a global-attention block
    a = block.Adapter
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        x = torch.randn(1, 16, 16, DIM)
        out = block(x)
        # independent evaluation: x1 = x + attn(norm1 x); y = norm2 x1;
        # out = x1 + mlp(y) + LN(y + relu(convT(relu(conv_s2(y * sigmoid(W2 relu(W1 mean(y))))))))
        x1 = x + block.attn(block.norm1(x))
        y = block.norm2(x1)
        yc = y.permute(0, 3, 1, 2)
        gate = torch.sigmoid(F.relu(yc.mean((2, 3)) @ a.channel[0].weight.T) @ a.channel[2].weight.T)
        s = F.relu(F.conv2d(yc * gate[:, :, None, None], a.spatial[0].weight, stride=2, padding=1))
        s = F.relu(F.conv_transpose2d(s, a.spatial[2].weight, stride=2, padding=1))
        adapter = F.layer_norm((yc + s).permute(0, 2, 3, 1), (DIM,), a.norm.weight, a.norm.bias, a.norm.eps)
        expected = x1 + block.mlp(y) + adapter
    assert torch.allclose(out, expected, atol=1e-5)
