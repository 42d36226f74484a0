"""Prepared decoding (image side of the mask decoder once per image) equals segment_anything's decoder."""

from __future__ import annotations

import pytest
import torch

from medfoundry.models.sam import build_sam
from medfoundry.models.sam_fast import accelerate_decoder
from medfoundry.models.sam_prepared import PreparedEmbedding, prepare_image_parts


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam({"encoder": "lite", "image_size": 256, "backbone": "resnet10t", "embed_stride": 4}).eval()


PROMPTS = [
    {"boxes": torch.tensor([[30.0, 40.0, 200.0, 180.0]])},
    {"boxes": torch.tensor([[30.0, 40.0, 200.0, 180.0], [5.0, 5.0, 60.0, 90.0], [100.0, 120.0, 250.0, 250.0]])},
    {"points": (torch.tensor([[[100.0, 100.0], [20.0, 30.0]]]), torch.tensor([[1, 0]]))},
    {"boxes": torch.tensor([[30.0, 40.0, 200.0, 180.0]]), "points": (torch.tensor([[[90.0, 70.0]]]),
                                                                      torch.tensor([[0]]))},
]


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
@pytest.mark.parametrize("multimask", [False, True])
def test_prepared_decode_equals_reference(model, prompt: int, multimask: bool) -> None:
    torch.manual_seed(1)
    emb = torch.randn(1, 256, 64, 64)
    prepared = PreparedEmbedding(emb)
    with torch.inference_mode():
        ref_logits, ref_iou = model.decode(emb, multimask=multimask, reference=True, **PROMPTS[prompt])
        for _ in range(2):  # the second call reuses the prepared parts
            logits, iou = model.decode(prepared, multimask=multimask, **PROMPTS[prompt])
            assert logits.shape == ref_logits.shape and iou.shape == ref_iou.shape
            torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(iou, ref_iou, atol=2e-6, rtol=1e-5)
    assert len(prepared._parts) == 1


def test_mask_input_equals_the_reference_path(model) -> None:
    emb = torch.randn(1, 256, 64, 64)
    mask = torch.randn(1, 1, 256, 256)
    box = torch.tensor([[30.0, 40.0, 200.0, 180.0]])
    with torch.inference_mode():
        ref = model.decode(emb, boxes=box, mask_input=mask, reference=True)
        got = model.decode(PreparedEmbedding(emb), boxes=box, mask_input=mask)
    torch.testing.assert_close(got[0], ref[0], atol=2e-5, rtol=1e-5)


def test_prepared_parts_follow_the_decoder_dtype() -> None:
    torch.manual_seed(0)
    model = build_sam({"encoder": "lite", "image_size": 256, "backbone": "resnet10t", "embed_stride": 4}).eval()
    emb = torch.randn(1, 256, 64, 64)
    box = torch.tensor([[30.0, 40.0, 200.0, 180.0]])
    prepared = PreparedEmbedding(emb)
    with torch.inference_mode():
        ref, _ = model.decode(emb, boxes=box)
        model.decode(prepared, boxes=box)
        accelerate_decoder(model.mask_decoder, bf16=True)
        fast, _ = model.decode(prepared, boxes=box)
    assert {p.keys.dtype for p in prepared._parts.values()} == {torch.float32, torch.bfloat16}
    assert fast.dtype == torch.float32 and ((fast > 0) == (ref > 0)).float().mean() > 0.98


def test_prepare_checks_the_embedding(model) -> None:
    with pytest.raises(ValueError, match="image embeddings"):
        prepare_image_parts(model.prompt_encoder, model.mask_decoder, torch.randn(256, 64, 64))
    with pytest.raises(ValueError, match="grid"):
        prepare_image_parts(model.prompt_encoder, model.mask_decoder, torch.randn(1, 256, 32, 32))


def test_subpixel_upscaling_equals_the_transposed_convolutions(model) -> None:
    from medfoundry.models.sam_prepared import upscaled_masks

    torch.manual_seed(2)
    upscaling = model.mask_decoder.output_upscaling
    keys, hyper = torch.randn(2, 16 * 12, 256), torch.randn(2, 4, 32)
    with torch.inference_mode():
        ref = torch.einsum("bmc,bchw->bmhw", hyper, upscaling(keys.view(2, 16, 12, -1).permute(0, 3, 1, 2)))
        got = upscaled_masks(upscaling, keys, (16, 12), hyper, subpixel=True)
    assert got.shape == ref.shape == (2, 4, 64, 48)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_positional_encoding_is_shared_and_parts_can_be_released(model) -> None:
    from medfoundry.models.sam_prepared import dense_positional_encoding

    a, b = PreparedEmbedding(torch.randn(1, 256, 64, 64)), PreparedEmbedding(torch.randn(1, 256, 64, 64))
    pa, pb = a.parts(model.prompt_encoder, model.mask_decoder), b.parts(model.prompt_encoder, model.mask_decoder)
    assert pa.pe is pb.pe is dense_positional_encoding(model.prompt_encoder, torch.float32)
    torch.testing.assert_close(pa.pe, model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2))
    a.release()
    assert not a._parts and a.parts(model.prompt_encoder, model.mask_decoder).keys.shape == (1, 4096, 256)


def test_segmenter_keeps_prepared_parts_for_the_last_few_crops_only() -> None:
    import numpy as np

    from medfoundry.io import MedImage
    from medfoundry.predict.segment import open_segmenter

    seg = open_segmenter("medfoundry-sam-lite")
    rng = np.random.default_rng(0)
    seg.set_image(MedImage(array=rng.integers(0, 255, (200, 240, 3), dtype=np.uint8), spacing=(1.0, 1.0),
                           photometric="RGB"))
    boxes = [np.array([[10.0 + 5 * i, 10.0, 120.0 + 5 * i, 130.0]]) for i in range(7)]
    first = seg.predict(boxes=boxes[0]).masks
    for box in boxes[1:]:
        seg.predict(boxes=box)
    prepared = [e for e in seg._cache.values() if e._parts]
    assert len(seg._cache) == 7 and len(prepared) == 4
    assert np.array_equal(seg.predict(boxes=boxes[0]).masks, first)  # released parts are rebuilt, same mask
