"""CUDA code paths (skipped without a GPU): the segmenter, the prepared decoder and a training step on the
device agree with the CPU. CI has no GPU; run with ``pytest -m gpu`` on a machine that has one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.io import MedImage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _polyp_like(seed: int = 0) -> tuple[MedImage, np.ndarray]:
    rng = np.random.default_rng(seed)
    arr = rng.integers(30, 80, (240, 300, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:240, 0:300]
    arr[((yy - 120) / 50) ** 2 + ((xx - 150) / 70) ** 2 < 1] = (220, 120, 110)
    return MedImage(array=arr, spacing=(1.0, 1.0), photometric="RGB"), np.array([[70.0, 60.0, 230.0, 180.0]])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("decoder", ["default", "bf16"])
def test_embedded_segmenter_on_cuda_agrees_with_cpu(decoder: str) -> None:
    from medfoundry.predict.segment import open_segmenter

    image, box = _polyp_like()
    masks = {}
    for device in ("cpu", "cuda"):
        seg = open_segmenter("medfoundry-sam-lite", device=device)
        if decoder == "bf16":
            seg.set_decoder_precision("bf16")
        seg.set_image(image)
        first = seg.predict(boxes=box).best()[0]
        again = seg.predict(boxes=box).best()[0]  # second prompt: the prepared image side on the device
        assert np.array_equal(first, again)
        masks[device] = first
    assert masks["cpu"].any() and _iou(masks["cpu"], masks["cuda"]) > (0.99 if decoder == "default" else 0.97)


def test_prepared_decode_on_cuda_equals_the_reference_decoder() -> None:
    from medfoundry.models.sam import build_sam
    from medfoundry.models.sam_prepared import PreparedEmbedding

    torch.manual_seed(0)
    model = build_sam({"encoder": "lite", "image_size": 256, "backbone": "resnet10t", "embed_stride": 4}).eval().cuda()
    emb = torch.randn(1, 256, 64, 64, device="cuda")
    boxes = torch.tensor([[30.0, 40.0, 200.0, 180.0], [5.0, 5.0, 60.0, 90.0]], device="cuda")
    with torch.inference_mode():
        ref, ref_iou = model.decode(emb, boxes=boxes, multimask=True)
        got, iou = model.decode(PreparedEmbedding(emb), boxes=boxes, multimask=True)
    assert got.device.type == "cuda"
    scale = ref.abs().max().item()
    assert (got - ref).abs().max().item() < 1e-3 * max(scale, 1.0)  # cuDNN may use TF32 in the reference convs
    assert ((got > 0) == (ref > 0)).float().mean().item() > 0.999
    torch.testing.assert_close(iou, ref_iou, atol=1e-3, rtol=1e-3)


def test_sam_training_step_on_cuda(tmp_path: Path, disc_manifest: Path) -> None:
    from medfoundry.train.sam import SamTrainConfig, train_sam

    manifest = disc_manifest
    cfg = SamTrainConfig(manifest=str(manifest), out=str(tmp_path / "run"), epochs=2, batch_size=2,
                         steps_per_epoch=3, device="cuda", warmup_steps=1, pool_mix=(2, 1))
    cfg.arch.update(image_size=64, backbone="resnet10t")
    train_sam(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and all(np.isfinite(h["loss"]) and 0 <= h["val_dice"] <= 1 for h in history)
