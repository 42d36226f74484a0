"""The segmenter's embedding cache is keyed by everything an embedding depends on: the weights (for the cache on
disk, shared by models), the pixel values with their shape and dtype, and the intensity window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.io import MedImage, Window
from medfoundry.predict.segment import image_key, load_segmenter
from medfoundry.registry import ModelRecord

pytest.importorskip("segment_anything")

PRE = {"image_size": 256, "resize": "longest_pad", "channels": 3, "intensity": "window", "scale": 255.0,
       "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "interpolation": "bilinear"}
RECORD = ModelRecord.from_dict({"name": "tiny-sam", "arch": "sam", "arch_config": {"encoder": "vit_test",
                                "image_size": 256}, "family": "VPM-generalist", "tasks": ["segmentation-2d"],
                                "modalities": ["CT"], "license": "MIT", "commercial_use": True, "paper": "t",
                                "training_data": "t", "preprocess": PRE})


def _state(seed: int) -> dict[str, torch.Tensor]:
    from medfoundry.models.sam import build_sam

    torch.manual_seed(seed)
    return build_sam({"encoder": "vit_test", "image_size": 256}).state_dict()


def _counting(seg, calls: list) -> None:
    original = seg.model.embed
    seg.model.embed = lambda x: calls.append(1) or original(x)


def _ct(array: np.ndarray, window: Window | None = None) -> MedImage:
    return MedImage(array=array, spacing=(1.0, 1.0), modality="CT", units="HU", window=window)


def test_disk_cache_is_not_shared_by_other_weights(tmp_path: Path) -> None:
    image = _ct(np.random.default_rng(0).normal(0, 300, (64, 80)).astype(np.float32))
    box = np.array([[10.0, 10.0, 50.0, 40.0]])
    calls: list = []
    first = load_segmenter(RECORD, _state(0), cache_dir=tmp_path)
    _counting(first, calls)
    first.set_image(image)
    a = first.predict(boxes=box)
    other = load_segmenter(RECORD, _state(1), cache_dir=tmp_path)  # same record name, other weights
    _counting(other, calls)
    other.set_image(image)
    b = other.predict(boxes=box)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.pt"))) == 2  # its own embedding, not the first's
    same = load_segmenter(RECORD, _state(0), cache_dir=tmp_path)
    _counting(same, calls)
    same.set_image(image)
    np.testing.assert_array_equal(same.predict(boxes=box).masks, a.masks)
    assert len(calls) == 2  # the same weights read the first one's embedding from disk
    assert not np.array_equal(a.logits, b.logits)


def test_image_key_covers_shape_dtype_and_window() -> None:
    values = np.arange(24 * 40, dtype=np.int16).reshape(24, 40)
    base = image_key(_ct(values))
    assert image_key(_ct(values.copy())) == base
    assert image_key(_ct(values.reshape(40, 24))) != base  # same bytes, other shape
    assert image_key(_ct(values.view(np.uint16))) != base  # same bytes, other dtype
    assert image_key(_ct(values, Window(40, 400))) != image_key(_ct(values, Window(400, 1800)))


def test_in_memory_cache_tells_a_reshaped_image_apart() -> None:
    seg = load_segmenter(RECORD, _state(0))
    calls: list = []
    _counting(seg, calls)
    values = np.random.default_rng(1).normal(0, 300, (48, 96)).astype(np.float32)
    seg.set_image(_ct(values))
    seg.set_image(_ct(values.reshape(96, 48)))
    seg.set_image(_ct(values, Window(-600, 1500)))
    assert len(calls) == 3
