"""MedSAM2 runs through the sam2 package and matches its image predictor and its video predictor (3D propagation
from a key-slice box, as MedSAM2's medsam2_infer_3D_CT.py drives it).

The network is MedSAM2's config (sam2.1 Hiera-T at 512 px) with its Hiera stages and memory attention shrunk to
one block each so the test is quick; random weights are saved as SAM 2 checkpoints are (``{"model": ...}``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.io.image import MedImage
from medfoundry.io.window import Window
from medfoundry.registry import get_record

pytest.importorskip("sam2")
pytest.importorskip("hydra")

TINY = ("++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.memory_attention.num_layers=1")
BOX = np.array([14.0, 18.0, 44.0, 46.0], np.float32)
WINDOW = Window(40.0, 400.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from medfoundry.models.medsam2 import MEDSAM2_OVERRIDES, build_medsam2

    torch.manual_seed(0)
    model = build_medsam2(overrides=(*MEDSAM2_OVERRIDES, *TINY))
    with torch.no_grad():  # random heads say "no object" (masks set to -1024): make the object present
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    path = tmp_path_factory.mktemp("medsam2") / "MedSAM2_latest.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _record():
    from medfoundry.models.medsam2 import BASE_CONFIG, MEDSAM2_OVERRIDES

    return dataclasses.replace(get_record("medsam2"),
                               arch_config={"config": BASE_CONFIG, "overrides": [*MEDSAM2_OVERRIDES, *TINY]})


def _reference(checkpoint: Path):
    from sam2.build_sam import build_sam2_video_predictor

    from medfoundry.models.medsam2 import BASE_CONFIG, MEDSAM2_OVERRIDES

    return build_sam2_video_predictor(BASE_CONFIG, str(checkpoint), device="cpu",
                                      hydra_overrides_extra=[*MEDSAM2_OVERRIDES, *TINY]).float().eval()


def _volume() -> MedImage:
    """A CT-like volume: a bright ellipsoid on soft tissue, 4 slices of 60 × 64."""
    z, y, x = np.mgrid[0:4, 0:60, 0:64]
    blob = ((x - 29) / 14.0) ** 2 + ((y - 32) / 12.0) ** 2 + ((z - 1.5) / 2.5) ** 2 < 1
    rng = np.random.default_rng(0)
    array = np.where(blob, 180.0, 20.0) + rng.normal(0, 15, blob.shape)
    return MedImage(array.astype(np.float32), spacing=(3.0, 0.8, 0.8), modality="CT")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def test_image_predictor_matches_sam2(checkpoint: Path) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from medfoundry.predict.medsam2 import load_sam2_segmenter

    segmenter = load_sam2_segmenter(_record(), checkpoint)
    image = _volume().slice(2)
    segmenter.set_image(image)
    ours = segmenter.predict(boxes=BOX[None])
    reference = SAM2ImagePredictor(_reference(checkpoint))
    reference._bb_feat_sizes = [(128, 128), (64, 64), (32, 32)]  # 512 px, as MedSAM2's fork computes them
    rgb = np.repeat(image.to_display()[..., None], 3, axis=-1)
    with torch.inference_mode():
        reference.set_image(rgb)
        masks, iou, low = reference.predict(box=BOX, multimask_output=False)
    assert ours.masks.shape == (1, 1, 60, 64)
    assert np.abs(ours.logits[0] - low).max() <= 1e-4
    assert np.abs(ours.iou[0] - iou).max() <= 1e-4
    assert _iou(ours.masks[0, 0], masks[0].astype(bool)) >= 0.99


def test_volume_propagation_matches_video_predictor(checkpoint: Path, monkeypatch) -> None:
    import sam2.sam2_video_predictor as video
    from PIL import Image
    from scipy import ndimage

    from medfoundry.predict.medsam2 import load_sam2_segmenter, volume_frames, window_volume

    volume = _volume()
    segmenter = load_sam2_segmenter(_record(), checkpoint)
    ours = segmenter.segment_volume(volume, key_slice=2, box=BOX, window=WINDOW)
    # MedSAM2's chain written out: clip, min-max over the volume, uint8, Pillow RGB resize, /255, ImageNet
    clipped = np.clip(volume.array, WINDOW.low, WINDOW.high)
    u8 = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)
    assert np.array_equal(window_volume(volume.array, WINDOW), u8)
    resized = np.stack([np.array(Image.fromarray(s).convert("RGB").resize((512, 512))).transpose(2, 0, 1)
                        for s in u8]) / 255.0
    frames = torch.from_numpy(resized)
    frames = ((frames - torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32)[:, None, None])
              / torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32)[:, None, None])
    assert float((volume_frames(u8) - frames).abs().max()) <= 1e-4
    reference = _reference(checkpoint)
    monkeypatch.setattr(video, "load_video_frames", lambda **_: (frames.float(), 60, 64))
    expected = np.zeros(volume.array.shape, bool)
    with torch.inference_mode():
        state = reference.init_state(video_path="unused")
        for reverse in (False, True):
            reference.add_new_points_or_box(inference_state=state, frame_idx=2, obj_id=1, box=BOX)
            for index, _, logits in reference.propagate_in_video(state, reverse=reverse):
                expected[index] |= (logits[0] > 0.0).numpy()[0]
            reference.reset_state(state)
    labels, count = ndimage.label(expected, structure=np.ones((3, 3, 3)))
    if count > 1:
        expected = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    assert expected.any() and not expected.all()
    assert ours.shape == expected.shape
    assert _iou(ours, expected) >= 0.99


def test_wrong_inputs_are_typed_errors(checkpoint: Path, tmp_path: Path) -> None:
    from medfoundry.predict.medsam2 import load_sam2_segmenter

    segmenter = load_sam2_segmenter(_record(), checkpoint)
    volume = _volume()
    with pytest.raises(InputContractError, match="before"):
        segmenter.predict(boxes=BOX[None])
    with pytest.raises(InputContractError, match="2D"):
        segmenter.set_image(volume)
    with pytest.raises(InputContractError, match="key slice"):
        segmenter.segment_volume(volume, key_slice=9, box=BOX)
    with pytest.raises(InputContractError, match="outside"):
        segmenter.segment_volume(volume, key_slice=1, box=[10, 10, 90, 40])
    with pytest.raises(InputContractError, match="volume"):
        segmenter.segment_volume(volume.slice(0), key_slice=0, box=BOX)
    state = torch.load(checkpoint, weights_only=True)["model"]
    state.pop("no_mem_embed")
    torch.save({"model": state}, tmp_path / "cut.pt")
    with pytest.raises(WeightsError, match="missing"):
        load_sam2_segmenter(_record(), tmp_path / "cut.pt")
    # open_segmenter builds the registered MedSAM2 (the full Hiera-T at 512), which the tiny weights do not fit
    from medfoundry.predict.segment import open_segmenter

    with pytest.raises(WeightsError, match="do not fit MedSAM2"):
        open_segmenter("medsam2", weights=checkpoint)
