"""The transformers SamModel layout (as wanglab/medsam-vit-base is published) loads into medfoundry's
segment_anything-based model and gives transformers' own outputs for the same pixels and prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.io import MedImage
from medfoundry.models.sam import build_sam
from medfoundry.models.sam_formats import hf_sam_to_segment_anything, is_hf_sam
from medfoundry.predict.preprocess import preprocess
from medfoundry.predict.segment import load_segmenter
from medfoundry.registry import ModelRecord

transformers = pytest.importorskip("transformers")

PRE = {"image_size": 256, "resize": "longest_pad", "channels": 3, "intensity": "uint8", "scale": 255.0,
       "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def hf_sam():
    from transformers import SamConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                             window_size=4, image_size=256, output_channels=256, mlp_dim=256)
    torch.manual_seed(0)
    prompt = SamPromptEncoderConfig(image_size=256, image_embedding_size=16)
    model = SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict())).eval()
    with torch.no_grad():  # transformers initialises some tensors to zeros/ones: randomise everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _record() -> ModelRecord:
    return ModelRecord.from_dict({"name": "tiny-hf-sam", "arch": "sam",
                                  "arch_config": {"encoder": "vit_test", "image_size": 256},
                                  "family": "VPM-adaptation", "tasks": ["segmentation-2d"], "modalities": ["CT"],
                                  "license": "MIT", "commercial_use": True, "paper": "t", "training_data": "t",
                                  "preprocess": PRE})


def test_every_key_maps_and_loads_strictly(hf_sam) -> None:
    state = hf_sam.state_dict()
    assert is_hf_sam(state)
    converted = hf_sam_to_segment_anything(state)
    ours = build_sam({"encoder": "vit_test", "image_size": 256})
    ours.load_state_dict(converted, strict=True)  # no missing, no unexpected keys, same shapes
    assert not is_hf_sam(ours.state_dict())


@pytest.mark.parametrize("prompt", ["box", "points", "box+points"])
def test_outputs_equal_transformers_sam(hf_sam, prompt: str) -> None:
    ours = build_sam({"encoder": "vit_test", "image_size": 256}).eval()
    ours.load_state_dict(hf_sam_to_segment_anything(hf_sam.state_dict()))
    x = torch.randn(1, 3, 256, 256)
    box = torch.tensor([[40.0, 60.0, 180.0, 200.0]])
    pts = torch.tensor([[[100.0, 120.0], [30.0, 30.0]]])
    labels = torch.tensor([[1, 0]])
    kwargs = {}
    if "box" in prompt:
        kwargs["input_boxes"] = box[None]
    if "points" in prompt:
        kwargs["input_points"], kwargs["input_labels"] = pts[None], labels[None]
    with torch.no_grad():
        ref = hf_sam(pixel_values=x, multimask_output=True, **kwargs)
        emb = ours.embed(x)
        assert torch.allclose(emb, hf_sam.get_image_embeddings(x), atol=1e-5)
        logits, iou = ours.decode(emb, points=(pts, labels) if "points" in prompt else None,
                                  boxes=box if "box" in prompt else None, multimask=True)
    assert torch.allclose(logits, ref.pred_masks[:, 0], atol=1e-4)
    assert torch.allclose(iou, ref.iou_scores[:, 0], atol=1e-5)


def test_a_saved_transformers_folder_segments_like_transformers(hf_sam, tmp_path: Path) -> None:
    hf_sam.save_pretrained(tmp_path / "hf")
    seg = load_segmenter(_record(), tmp_path / "hf")  # the folder save_pretrained writes, as on the hub
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (180, 240, 3), dtype=np.uint8)
    arr[60:130, 80:170] = [220, 180, 160]
    image = MedImage(array=arr, spacing=(1.0, 1.0), photometric="RGB")
    seg.set_image(image)
    box = np.array([70.0, 50.0, 180.0, 140.0])
    ours = seg.predict(boxes=box[None]).best()[0]
    pixels, info = preprocess(image, seg.record.preprocess)
    sy, sx = info.scale
    with torch.no_grad():
        ref = hf_sam(pixel_values=pixels[None], input_boxes=torch.tensor([[[70 * sx, 50 * sy, 180 * sx, 140 * sy]]],
                                                                         dtype=torch.float32),
                     multimask_output=False).pred_masks[0]
    up = torch.nn.functional.interpolate(ref, size=(256, 256), mode="bilinear", align_corners=False)
    up = up[..., : info.content[0], : info.content[1]]
    theirs = (torch.nn.functional.interpolate(up, size=(180, 240), mode="bilinear", align_corners=False) > 0)[0, 0]
    theirs = theirs.numpy()
    union = (ours | theirs).sum()
    assert union == 0 or (ours & theirs).sum() / union >= 0.99
