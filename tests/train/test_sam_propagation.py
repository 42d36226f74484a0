"""The slice-propagation head: model plumbing, training data, training run, predictor and 3D use."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage

pytest.importorskip("segment_anything")

ARCH = {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4, "prompt_crop": 0.25}


def _ellipsoids(path: Path, depth: int = 10) -> np.ndarray:
    """A CT-like NIfTI volume (depth × 64 × 64, 5 mm slices) with two labelled ellipsoids; returns the labels
    in medfoundry's (Z, Y, X) order."""
    zz, yy, xx = np.mgrid[0:depth, 0:64, 0:64]
    labels = np.zeros((depth, 64, 64), np.int16)
    labels[(zz - 4) ** 2 * 9 + (yy - 22) ** 2 + (xx - 22) ** 2 <= 12**2] = 1
    labels[(zz - 6) ** 2 * 25 + (yy - 44) ** 2 + (xx - 44) ** 2 <= 11**2] = 2
    ct = np.where(labels > 0, 60.0, -100.0) + np.random.default_rng(0).normal(0, 5, labels.shape)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    for name, arr in (("ct.nii.gz", ct.astype(np.float32)), ("seg.nii.gz", labels)):
        nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), affine), path / name)
    return labels


def test_new_head_decodes_like_the_prompt_head() -> None:
    from medfoundry.models.sam import build_sam

    torch.manual_seed(0)
    model = build_sam(dict(ARCH)).eval()
    with pytest.raises(InputContractError, match="propagation"):
        model.decode(torch.zeros(1, 256, 16, 16), boxes=torch.tensor([[8.0, 8.0, 40.0, 40.0]]), head="propagation")
    model.add_propagation_head()
    emb = torch.randn(1, 256, 16, 16)
    box, mask_in = torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a = model.decode(emb, boxes=box, mask_input=mask_in)
        b = model.decode(emb, boxes=box, mask_input=mask_in, head="propagation")
        c = model.decode_batch(emb, boxes=box, mask_input=mask_in, head="propagation")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b[0], c[0], atol=1e-5, rtol=1e-5)
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("propagation.")} == {"prompt_encoder",
                                                                                            "mask_decoder"}


def test_pairs_reach_past_the_object_and_respect_the_gap(tmp_path: Path) -> None:
    from medfoundry.train.sam_propagation import PropagationConfig, PropagationDataset, load_volume_objects

    labels = _ellipsoids(tmp_path)
    (tmp_path / "v.jsonl").write_text(json.dumps({"image": "ct.nii.gz", "mask": "seg.nii.gz", "split": "train"}))
    objects = load_volume_objects(tmp_path / "v.jsonl", max_gap_mm=10.0, val_fraction=0.0, seed=0)["train"]
    assert [o.name.split(":")[1] for o in objects] == ["1", "2"] and all(o.max_gap == 2 for o in objects)
    for obj in objects:
        value = int(obj.name.split(":")[1])
        np.testing.assert_array_equal(obj.masks, labels == value)
        pairs = obj.pairs()
        assert all((labels[s] == value).sum() >= 64 and 1 <= abs(t - s) <= 2 for s, t in pairs)
        assert any(not (labels[t] == value).any() for _, t in pairs)  # the object's ends are taught
    cfg = PropagationConfig(volumes="", init="", out="", arch=dict(ARCH))
    data = PropagationDataset(objects, cfg, 4, train=False)
    item = data[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert item["mask_input"].shape == (1, 64, 64)
    assert set(np.unique(np.sign(item["mask_input"].numpy()))) <= {-1.0, 1.0}
    assert len(data) == sum(len(o.pairs()) for o in objects)


def test_training_writes_a_propagating_model_and_resumes(tmp_path: Path) -> None:
    from medfoundry.models.sam import build_sam
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.volume import segment_volume
    from medfoundry.train.sam_propagation import PropagationConfig, train_propagation

    _ellipsoids(tmp_path)
    (tmp_path / "v.jsonl").write_text(json.dumps({"image": "ct.nii.gz", "mask": "seg.nii.gz"}) + "\n")
    torch.manual_seed(0)
    from medfoundry.cli.main import main
    from medfoundry.registry.catalog import get_record
    from medfoundry.registry.loading import save_checkpoint

    base = dataclasses.replace(get_record("medfoundry-sam-lite"), arch_config=dict(ARCH), weights=(), embedded=False,
                               preprocess=dataclasses.replace(get_record("medfoundry-sam-lite").preprocess,
                                                              image_size=64))
    init_folder = save_checkpoint(build_sam(dict(ARCH)).state_dict(), base, tmp_path / "init")
    assert main(["train", "sam-propagation", "--volumes", str(tmp_path / "v.jsonl"), "--model",
                 f"local-dir:{init_folder}", "--out", str(tmp_path / "run"), "--epochs", "1", "--steps-per-epoch",
                 "2", "--batch-size", "2", "--seed", "1", "--device", "cpu", "--checkpoint-every", "1"]) == 0
    run_cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert run_cfg["arch"]["image_size"] == 64  # the architecture comes from the extended model
    assert run_cfg["checkpoint_every"] == 1
    cfg = PropagationConfig(**{**run_cfg, "epochs": 2})
    folder = train_propagation(cfg, base=base)  # resumes at epoch 1
    seg = open_segmenter(f"local-dir:{folder}")
    assert seg.can_propagate
    state = seg.model.state_dict()
    from safetensors.torch import load_file

    init = load_file(init_folder / "model.safetensors")
    for k in init:  # encoder and first decoder untouched, head trained
        torch.testing.assert_close(state[k], init[k])
    assert any(not torch.equal(state[f"propagation.{k}"], init[k]) for k in init if k.startswith("mask_decoder."))
    image = MedImage(array=np.zeros((6, 64, 64), np.float32), spacing=(5.0, 1.0, 1.0), modality="CT")
    image.array[:, 20:40, 20:40] = 80
    result = segment_volume(seg, image, 3, box=np.array([20.0, 20.0, 40.0, 40.0]), use_head=True)
    assert result.mask.shape == (6, 64, 64) and result.mask[3].any()
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "--model", f"local-dir:{folder}", "--slice", "4",
                 "--box", "12,12,33,33", "--propagate", "--propagation-head", "--out", str(out)]) == 0
    assert nib.load(out).shape == (64, 64, 10)


def test_predict_next_refuses_bad_input() -> None:
    from medfoundry.models.sam import build_sam
    from medfoundry.predict.segment import PromptSegmenter
    from medfoundry.registry.catalog import get_record

    record = get_record("medfoundry-sam-lite")
    plain = PromptSegmenter(build_sam(dict(ARCH)), record)
    assert not plain.can_propagate
    with pytest.raises(InputContractError, match="no propagation head"):
        plain.predict_next(np.ones((64, 64), bool))
    seg = PromptSegmenter(build_sam(dict(ARCH)).add_propagation_head(), record)
    with pytest.raises(InputContractError, match="set_image"):
        seg.predict_next(np.ones((64, 64), bool))
    seg.set_image(MedImage(array=np.zeros((64, 64), np.float32), spacing=(1.0, 1.0)))
    with pytest.raises(InputContractError, match="does not match"):
        seg.predict_next(np.ones((32, 64), bool))
    with pytest.raises(InputContractError, match="empty"):
        seg.predict_next(np.zeros((64, 64), bool))



def test_volume_manifest_refuses_2d_images_and_mismatched_label_maps(tmp_path: Path) -> None:
    from PIL import Image

    from medfoundry.train.sam_propagation import load_volume_objects

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "flat.png")
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "flat.png", "mask": "flat.png"}))
    with pytest.raises(InputContractError, match="volumes"):
        load_volume_objects(tmp_path / "a.jsonl", 6.0, 0.0, 0)
    _ellipsoids(tmp_path, depth=10)
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 8), np.int16), np.diag([1.0, 1.0, 5.0, 1.0])), tmp_path / "short.nii.gz")
    (tmp_path / "b.jsonl").write_text(json.dumps({"image": "ct.nii.gz", "mask": "short.nii.gz"}))
    with pytest.raises(InputContractError, match="does not match"):
        load_volume_objects(tmp_path / "b.jsonl", 6.0, 0.0, 0)
