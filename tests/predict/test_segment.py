"""PromptSegmenter against segment_anything's SamPredictor, prompt validation, caching and crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError
from medfoundry.io import MedImage
from medfoundry.predict.segment import load_segmenter
from medfoundry.registry import ModelRecord, get_record, save_checkpoint

segment_anything = pytest.importorskip("segment_anything")

SAM_PRE = {"image_size": 256, "resize": "longest_pad", "channels": 3, "intensity": "uint8", "scale": 255.0,
           "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "interpolation": "bilinear"}


def _record(arch_config: dict, pre: dict = SAM_PRE) -> ModelRecord:
    return ModelRecord.from_dict({"name": "tiny-sam", "arch": "sam", "arch_config": arch_config,
                                  "family": "VPM-generalist", "tasks": ["segmentation-2d"], "modalities": ["CT"],
                                  "license": "MIT", "commercial_use": True, "paper": "t", "training_data": "t",
                                  "preprocess": pre})


def _rgb_image(h: int = 150, w: int = 200) -> MedImage:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    arr[((yy - 70) ** 2 + (xx - 90) ** 2) < 900] = [220, 180, 160]
    return MedImage(array=arr, spacing=(0.5, 0.5), photometric="RGB")


@pytest.fixture(scope="module")
def tiny_sam():
    from medfoundry.models.sam import build_sam

    torch.manual_seed(0)
    model = build_sam({"encoder": "vit_test", "image_size": 256}).eval()
    return model


def _reference_predictor(model):
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval()
    return SamPredictor(sam)


@pytest.mark.parametrize("prompt", ["box", "points", "box+points"])
def test_masks_match_segment_anything(tiny_sam, prompt: str) -> None:
    image = _rgb_image()
    record = _record({"encoder": "vit_test", "image_size": 256})
    ours = load_segmenter(record, tiny_sam.state_dict())
    ref = _reference_predictor(ours.model)
    ref.set_image(image.array)
    box = np.array([50.0, 35.0, 135.0, 110.0]) if "box" in prompt else None
    pts = np.array([[90.0, 70.0], [20.0, 20.0]]) if "points" in prompt else None
    lab = np.array([1, 0]) if pts is not None else None
    ref_masks, ref_iou, _ = ref.predict(point_coords=pts, point_labels=lab, box=box, multimask_output=True)
    ours.set_image(image)
    out = ours.predict(boxes=None if box is None else box[None], points=pts, point_labels=lab, multimask=True)
    for k in range(3):
        a, b = out.masks[0, k], ref_masks[k]
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou >= 0.99, (k, iou)
    np.testing.assert_allclose(out.iou[0], ref_iou, atol=1e-4)


def test_prompt_errors(tiny_sam) -> None:
    seg = load_segmenter(_record({"encoder": "vit_test", "image_size": 256}), tiny_sam.state_dict())
    with pytest.raises(InputContractError, match="set_image"):
        seg.predict(boxes=np.array([[0, 0, 10, 10]]))
    seg.set_image(_rgb_image())
    cases = [
        ({}, "at least one prompt"),
        ({"boxes": np.array([[50, 50, 40, 60]])}, "inverted"),
        ({"boxes": np.array([[50, 50, 50, 60]])}, "empty"),
        ({"boxes": np.array([[0, 0, 500, 60]])}, "outside"),
        ({"points": np.array([[10, 10]])}, "labels"),
        ({"points": np.array([[10, 10]]), "point_labels": np.array([2])}, "0 .background"),
        ({"points": np.array([[-5, 10]]), "point_labels": np.array([1])}, "outside"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputContractError, match=message):
            seg.predict(**kwargs)


def test_volume_and_size_limit_refused(tiny_sam) -> None:
    seg = load_segmenter(_record({"encoder": "vit_test", "image_size": 256}), tiny_sam.state_dict(), max_pixels=1000)
    with pytest.raises(InputContractError, match="volume"):
        seg.set_image(MedImage(array=np.zeros((4, 20, 20)), spacing=(1, 1, 1)))
    with pytest.raises(InputContractError, match="limit"):
        seg.set_image(_rgb_image())


def test_embedding_is_cached_in_memory_and_on_disk(tiny_sam, tmp_path: Path, monkeypatch) -> None:
    seg = load_segmenter(_record({"encoder": "vit_test", "image_size": 256}), tiny_sam.state_dict(),
                         cache_dir=tmp_path)
    calls = []
    original = seg.model.embed
    monkeypatch.setattr(seg.model, "embed", lambda x: calls.append(1) or original(x))
    image = _rgb_image()
    seg.set_image(image)
    first = seg.predict(boxes=np.array([[50.0, 35.0, 135.0, 110.0]]))
    seg.predict(points=np.array([[90.0, 70.0]]), point_labels=np.array([1]))
    assert len(calls) == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    fresh = load_segmenter(seg.record, tiny_sam.state_dict(), cache_dir=tmp_path)
    monkeypatch.setattr(fresh.model, "embed", lambda x: calls.append(1) or original(x))
    fresh.set_image(image)
    again = fresh.predict(boxes=np.array([[50.0, 35.0, 135.0, 110.0]]))
    assert len(calls) == 1  # read from disk
    np.testing.assert_array_equal(first.masks, again.masks)


def test_embedding_tta_averages_the_mirrored_encoding(tiny_sam, monkeypatch) -> None:
    record = _record({"encoder": "vit_test", "image_size": 256})
    seg = load_segmenter(record, tiny_sam.state_dict(), tta="embedding")
    calls = []
    original = seg.model.embed
    monkeypatch.setattr(seg.model, "embed", lambda x: calls.append(1) or original(x))
    square = _rgb_image(160, 160)  # no padding: mirroring the image mirrors the model input
    mirrored = MedImage(array=square.array[:, ::-1].copy(), spacing=square.spacing, photometric="RGB")

    def embedding(image: MedImage) -> torch.Tensor:
        seg.set_image(image)
        return seg._embedding(None)[0].embedding

    a, b = embedding(square), embedding(mirrored)
    assert len(calls) == 4  # each image encoded as is and mirrored
    torch.testing.assert_close(a, b.flip(-1), atol=1e-5, rtol=1e-5)  # the average is mirror-symmetric
    plain = load_segmenter(record, tiny_sam.state_dict())
    plain.set_image(square)
    assert not torch.allclose(plain._embedding(None)[0].embedding, a, atol=1e-3)
    calls.clear()
    seg.predict(boxes=np.array([[50.0, 35.0, 135.0, 110.0]]))
    seg.predict(boxes=np.array([[40.0, 30.0, 120.0, 100.0]]))
    assert not calls  # prompts reuse the averaged embedding


def test_tta_modes_checked(tiny_sam) -> None:
    record = _record({"encoder": "vit_test", "image_size": 256})
    with pytest.raises(InputContractError, match="unknown test-time"):
        load_segmenter(record, tiny_sam.state_dict(), tta="flip")
    with pytest.raises(InputContractError, match="box-crop models"):
        load_segmenter(record, tiny_sam.state_dict(), tta="logits")


@pytest.mark.parametrize("tta", ["none", "embedding", "logits"])
def test_embedded_segmenter_loads_and_segments_a_bright_blob(tta: str) -> None:
    from medfoundry.predict.segment import open_segmenter

    record = get_record("medfoundry-sam-lite")
    assert record.embedded and record.weights[0].sha256
    seg = open_segmenter("medfoundry-sam-lite", tta=tta)
    image = _rgb_image()
    seg.set_image(image)
    mask = seg.predict(boxes=np.array([[55.0, 35.0, 125.0, 105.0]])).best()[0]
    yy, xx = np.mgrid[0:150, 0:200]
    truth = ((yy - 70) ** 2 + (xx - 90) ** 2) < 900
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.8


def test_self_describing_checkpoint_round_trip(tiny_sam, tmp_path: Path) -> None:
    from medfoundry.predict.segment import open_segmenter

    record = _record({"encoder": "vit_test", "image_size": 256})
    folder = save_checkpoint(tiny_sam.state_dict(), record, tmp_path / "ckpt")
    seg = open_segmenter(f"local-dir:{folder}")
    seg.set_image(_rgb_image())
    assert seg.predict(boxes=np.array([[50.0, 35.0, 135.0, 110.0]])).masks.shape == (1, 1, 150, 200)


@pytest.mark.parametrize("arch", [{"encoder": "vit_test", "image_size": 256},
                                  {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4,
                                   "prompt_crop": 0.25}])
def test_onnx_runtime_matches_torch(arch: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from medfoundry.export.onnx import OnnxSam, export_sam_onnx
    from medfoundry.models.sam import build_sam
    from medfoundry.predict.segment import PromptSegmenter

    torch.manual_seed(0)
    model = build_sam(arch).eval()
    pre = dict(SAM_PRE, image_size=arch["image_size"], resize="longest_pad" if arch["encoder"] != "lite" else "squash")
    record = _record(arch, pre)
    torch_seg = load_segmenter(record, model.state_dict())
    export_sam_onnx(torch_seg.model, tmp_path)
    assert not torch_seg.model.training  # export must not leave the model in training mode
    onnx_seg = PromptSegmenter(OnnxSam(tmp_path, torch_seg.model.config), record)
    image = _rgb_image()
    prompts = {"boxes": np.array([[50.0, 35.0, 135.0, 110.0]]), "points": np.array([[90.0, 70.0]]),
               "point_labels": np.array([1])}
    for seg in (torch_seg, onnx_seg):
        seg.set_image(image)
    a, b = torch_seg.predict(**prompts), onnx_seg.predict(**prompts)
    iou = (a.masks & b.masks).sum() / max((a.masks | b.masks).sum(), 1)
    assert iou >= 0.99 and np.allclose(a.iou, b.iou, atol=1e-3)
    # both run behind the one backend protocol; what ONNX cannot do is refused by the backend, not by the predictor
    from medfoundry.predict.backend import SegmentationBackend

    assert isinstance(torch_seg.model, SegmentationBackend) and isinstance(onnx_seg.model, SegmentationBackend)
    for change in (lambda: onnx_seg.set_precision("bf16"), lambda: onnx_seg.set_decoder_precision("bf16")):
        with pytest.raises(InputContractError, match="ONNX"):
            change()
    assert not onnx_seg.can_propagate and len(onnx_seg._weights_id()) == 0  # in memory: no weights in the key


def test_segmenter_refuses_what_is_not_a_backend() -> None:
    from medfoundry.predict.segment import PromptSegmenter

    with pytest.raises(InputContractError, match="not a segmentation backend"):
        PromptSegmenter(torch.nn.Linear(2, 2), _record({"encoder": "vit_test", "image_size": 256}))


@pytest.mark.parametrize("options", [{"onnx": "exported"}, {"precision": "bf16"}, {"embed_pool": 2},
                                     {"tta": "flip"}, {"cache_dir": "c"}])
def test_open_segmenter_refuses_sam_med3d_options_before_any_weights(options: dict) -> None:
    """SAM-Med3D runs through open_sam_med3d (float32, whole volumes): options of medfoundry's own SAM are typed
    errors that name them, raised before the (absent) weights are looked for."""
    from medfoundry.predict.segment import open_segmenter

    with pytest.raises(InputContractError, match=rf"sam-med3d-turbo \(SAM-Med3D\).*{next(iter(options))} do not"):
        open_segmenter("sam-med3d-turbo", **options)
