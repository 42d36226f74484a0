"""The mask decoder forward, written once (models/sam_prepared.py), against segment_anything's MaskDecoder.

Every way medfoundry decodes — one image with several prompts, with a mask input, a prepared embedding reused
across prompts, a training batch of one prompt per image, the propagation head — is compared with
``segment_anything.modeling.MaskDecoder.forward`` called on the same modules.
"""

from __future__ import annotations

import pytest
import torch

from medfoundry.models.sam import build_sam
from medfoundry.models.sam_prepared import PreparedEmbedding

pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_sam({"encoder": "vit_test", "image_size": 128, "propagation": True}).eval()
    with torch.no_grad():  # weights away from their initial values (zero biases, identical heads)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _reference(model, embedding, points=None, boxes=None, mask_input=None, multimask=False, head="prompt"):
    """segment_anything's own forward: its prompt encoder, then ``MaskDecoder.forward``."""
    prompt_encoder, decoder = model._heads(head)
    sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return decoder(image_embeddings=embedding, image_pe=prompt_encoder.get_dense_pe(),
                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)


BOXES = torch.tensor([[10.0, 20.0, 90.0, 100.0], [3.0, 3.0, 40.0, 60.0], [50.0, 60.0, 127.0, 120.0]])
POINTS = (torch.tensor([[[60.0, 50.0], [12.0, 30.0]]]).repeat(3, 1, 1), torch.tensor([[1, 0]]).repeat(3, 1))
CASES = {"boxes": {"boxes": BOXES}, "points": {"points": POINTS}, "both": {"boxes": BOXES, "points": POINTS},
         "mask": {"boxes": BOXES, "mask_input": torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))}}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("prepared", [False, True])
def test_decode_equals_mask_decoder(model, case: str, multimask: bool, prepared: bool) -> None:
    emb = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_logits, ref_iou = _reference(model, emb, multimask=multimask, **CASES[case])
        source = PreparedEmbedding(emb) if prepared else emb
        for _ in range(2):  # the second call on a prepared embedding reuses its image side
            logits, iou = model.decode(source, multimask=multimask, **CASES[case])
            assert logits.shape == ref_logits.shape == (3, 3 if multimask else 1, 32, 32)
            torch.testing.assert_close(logits, ref_logits, atol=5e-5, rtol=1e-5)
            torch.testing.assert_close(iou, ref_iou, atol=5e-6, rtol=1e-5)
            ref_via_flag = model.decode(source, multimask=multimask, reference=True, **CASES[case])
            assert torch.equal(ref_via_flag[0], ref_logits)


@pytest.mark.parametrize("head", ["prompt", "propagation"])
def test_training_batch_equals_mask_decoder_per_image(model, head: str) -> None:
    """decode_batch: B images with one prompt each, in one call, with gradients."""
    gen = torch.Generator().manual_seed(2)
    emb = torch.randn(3, 256, 8, 8, generator=gen, requires_grad=True)
    masks = torch.randn(3, 1, 32, 32, generator=gen)
    logits, iou = model.decode_batch(emb, boxes=BOXES, points=POINTS, mask_input=masks, head=head)
    for i in range(3):
        with torch.no_grad():
            ref_logits, ref_iou = _reference(model, emb[i : i + 1], boxes=BOXES[i : i + 1],
                                             points=(POINTS[0][i : i + 1], POINTS[1][i : i + 1]),
                                             mask_input=masks[i : i + 1], head=head)
        torch.testing.assert_close(logits[i : i + 1].detach(), ref_logits, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(iou[i : i + 1].detach(), ref_iou, atol=5e-6, rtol=1e-5)
    (logits.sum() + iou.sum()).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_prompts_and_images_must_pair_up(model) -> None:
    from medfoundry.models.sam_prepared import decode_prepared, prepare_image_parts

    parts = prepare_image_parts(model.prompt_encoder, model.mask_decoder, torch.randn(2, 256, 8, 8))
    with pytest.raises(ValueError, match="prepared images"):
        decode_prepared(model.mask_decoder, parts, torch.randn(3, 2, 256))
