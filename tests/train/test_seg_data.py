"""A training sample and the inference input built from the same image and box are identical (issue 13, defect 3).

Before the fix, training shrank images to 640 px before cropping and normalised with its own mean/std, and
inference resampled crops bilinearly without antialiasing whatever the contract said; these tests compare the
tensors the model receives on both sides, element for element.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.io import read_image
from medfoundry.predict.boxes import crop_box, mask_box
from medfoundry.predict.segment import PromptSegmenter
from medfoundry.registry import ModelRecord
from medfoundry.train.seg_data import box_crop_contract, load_manifest, training_sample

pytest.importorskip("segment_anything")
ARCH = {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4, "prompt_crop": 0.25}
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _record(intensity: str = "window", interpolation: str = "bilinear") -> ModelRecord:
    pre = {**box_crop_contract(ARCH["image_size"], MEAN, STD).__dict__, "intensity": intensity,
           "interpolation": interpolation}
    pre["mean"], pre["std"] = list(pre["mean"]), list(pre["std"])
    return ModelRecord.from_dict({"name": "tiny-crop", "arch": "sam", "arch_config": ARCH, "family": "VPM-adaptation",
                                  "tasks": ["segmentation-2d"], "modalities": ["CT"], "license": "MIT",
                                  "commercial_use": False, "paper": "t", "training_data": "t", "preprocess": pre})


def _inference_input(image, box: np.ndarray, record: ModelRecord) -> torch.Tensor:
    """The tensor a PromptSegmenter feeds the image encoder for ``box`` on ``image``."""
    from medfoundry.models.sam import build_sam

    torch.manual_seed(0)
    model = build_sam(dict(ARCH)).eval()
    seen: list[torch.Tensor] = []
    encode = model.embed

    def recording_embed(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return encode(x)

    model.embed = recording_embed  # type: ignore[method-assign]
    seg = PromptSegmenter(model, record)
    seg.set_image(image)
    seg.predict(boxes=box[None])
    assert len(seen) == 1
    return seen[0][0]


def _ct_volume(tmp_path: Path) -> tuple[Path, Path]:
    """A 900 × 700 CT slice (larger than the 640 px training used to shrink to) with a lesion, and its mask."""
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 25, (2, 700, 900)).astype(np.int16)
    yy, xx = np.mgrid[0:700, 0:900]
    lesion = ((yy - 330) / 90.0) ** 2 + ((xx - 510) / 140.0) ** 2 < 1
    hu[1][lesion] = 160
    mask = np.zeros(hu.shape, np.uint8)
    mask[1][lesion] = 1
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(hu.T, affine), tmp_path / "ct.nii.gz")  # (X, Y, Z) on disk
    nib.save(nib.Nifti1Image(mask.T, affine), tmp_path / "ct_mask.nii.gz")
    return tmp_path / "ct.nii.gz", tmp_path / "ct_mask.nii.gz"


def _manifest(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ct_training_sample_equals_inference_input(tmp_path: Path) -> None:
    image_path, mask_path = _ct_volume(tmp_path)
    record = _record()
    samples = load_manifest(_manifest(tmp_path, [{"image": image_path.name, "mask": mask_path.name, "slice": 1}]),
                            record.preprocess)["train"]
    assert len(samples) == 1 and samples[0].image.shape[:2] == (700, 900)  # full resolution, no 640 px shrink
    image = read_image(str(image_path)).slice(1)
    truth = read_image(str(mask_path)).array[1] > 0
    box = mask_box(truth)
    window = crop_box(box, ARCH["prompt_crop"], *truth.shape)
    sample = training_sample(samples[0].image, samples[0].mask, box, window, record.preprocess)
    seen = _inference_input(image, box, record)
    assert sample["image"].shape == seen.shape == (3, 64, 64)
    assert torch.equal(sample["image"], seen)
    assert sample["mask"].sum() > 0


@pytest.mark.parametrize(("intensity", "interpolation"), [("window", "bicubic"), ("minmax", "bilinear")])
def test_the_contract_decides_both_sides(tmp_path: Path, intensity: str, interpolation: str) -> None:
    """Interpolation and intensity mode come from the record on both sides (inference used to crop bilinearly
    without antialiasing whatever the contract said)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)
    mask = np.zeros((300, 420), np.uint8)
    mask[100:180, 150:260] = 255
    Image.fromarray(rgb).save(tmp_path / "im.png")
    Image.fromarray(mask).save(tmp_path / "im_mask.png")
    record = _record(intensity, interpolation)
    sample_values = load_manifest(_manifest(tmp_path, [{"image": "im.png", "mask": "im_mask.png"}]),
                                  record.preprocess)["train"][0]
    box = np.array([150, 100, 260, 180], np.float32)
    window = crop_box(box, ARCH["prompt_crop"], 300, 420)
    sample = training_sample(sample_values.image, sample_values.mask, box, window, record.preprocess)
    seen = _inference_input(read_image(str(tmp_path / "im.png")), box, record)
    assert torch.equal(sample["image"], seen)
    # and it is not the old inference crop (bilinear, no antialiasing) the contract did not ask for
    x0, y0, x1, y1 = window
    crop = torch.from_numpy(rgb[y0:y1, x0:x1].astype(np.float32) / 255).permute(2, 0, 1)[None]
    old = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", align_corners=False)[0]
    old = (old * 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert not torch.allclose(old, seen, atol=1e-3)


def test_box_crop_dataset_uses_the_same_sample(tmp_path: Path) -> None:
    """train sam's validation samples (no augmentation) are the inference inputs of the true box."""
    from medfoundry.train.sam import BoxCropDataset, SamTrainConfig

    image_path, mask_path = _ct_volume(tmp_path)
    manifest = _manifest(tmp_path, [{"image": image_path.name, "mask": mask_path.name, "slice": 1}])
    cfg = SamTrainConfig(manifest=str(manifest), out=str(tmp_path / "out"), arch=dict(ARCH), mean=MEAN, std=STD)
    samples = load_manifest(manifest, box_crop_contract(ARCH["image_size"], MEAN, STD))["train"]
    item = BoxCropDataset(samples, cfg, 1, train=False)[0]
    truth = read_image(str(mask_path)).array[1] > 0
    seen = _inference_input(read_image(str(image_path)).slice(1), mask_box(truth), _record())
    assert torch.equal(item["image"], seen)
