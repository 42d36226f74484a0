"""Training Box3DNet: samples built through the predictor's contract, a run that learns, its model folder used by
the segmentation flow and the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfoundry.errors import InputContractError

TINY = {"features": (4, 4, 8, 8, 16, 4), "contract": {"grid": (16, 32, 32)}}


def _blobs(folder: Path, name: str, seed: int) -> None:
    """A CT-like NIfTI volume (20 × 64 × 64, 4 mm slices, 1 mm pixels) with two labelled ellipsoids of random
    size and place, brighter than the background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[0:20, 0:64, 0:64]
    labels = np.zeros((20, 64, 64), np.int16)
    for value, (cz, cy, cx) in ((1, (8, 20, 22)), (2, (11, 44, 42))):
        rz, ry, rx = rng.uniform(8, 20), rng.uniform(6, 12), rng.uniform(6, 12)
        labels[((zz - cz) * 4 / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = value
    ct = np.where(labels > 0, 60.0, -80.0) + rng.normal(0, 10, labels.shape)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(ct.astype(np.float32), (2, 1, 0)), affine), folder / f"{name}_ct.nii.gz")
    nib.save(nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine), folder / f"{name}_seg.nii.gz")


def _manifest(folder: Path) -> Path:
    rows = []
    for i, split in enumerate(["train", "train", "train", "val"]):
        _blobs(folder, f"v{i}", i)
        rows.append({"image": f"v{i}_ct.nii.gz", "mask": f"v{i}_seg.nii.gz", "units": "HU", "split": split,
                     "source": "sts"})
    (folder / "volumes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "volumes.jsonl"


def test_training_example_follows_the_contract(tmp_path: Path) -> None:
    from medfoundry.predict.box3d import Box3DContract
    from medfoundry.train.box3d import Box3DTrainConfig, load_objects, training_example

    contract = Box3DContract(grid=(16, 32, 32))
    objects = load_objects(_manifest(tmp_path), contract)
    assert len(objects["train"]) == 6 and len(objects["val"]) == 2
    cfg = Box3DTrainConfig(volumes="", out="")
    x, y = training_example(objects["train"][0], contract, cfg, random.Random(3))
    assert x.shape == (2, 16, 32, 32) and y.shape == (16, 32, 32)
    assert float(x[0].min()) >= 0 and float(x[0].max()) <= 1 and set(x[1].unique().tolist()) <= {0.0, 1.0}
    assert 0.0 < float(y.mean()) < 0.6 and float(x[1].sum()) > 0
    # the prompt lies on the object: most prompted voxels hold it
    assert float((y * x[1]).sum() / x[1].sum()) > 0.4


def test_a_short_run_learns_and_its_folder_segments_through_the_flow_and_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medfoundry.cli.main import main
    from medfoundry.io import read_image
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.segmentation import segment
    from medfoundry.train.box3d import Box3DTrainConfig, train_box3d

    manifest = _manifest(tmp_path)
    cfg = Box3DTrainConfig(volumes=str(manifest), out=str(tmp_path / "run"), epochs=2, steps_per_epoch=15,
                           batch_size=2, lr=3e-3, warmup_steps=3, device="cpu", **TINY)  # type: ignore[arg-type]
    folder = train_box3d(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    before, after = history[0]["val_dice_3d"], history[-1]["val_dice_3d"]
    assert after > before + 0.2 and after > 0.5, (before, after)

    seg = open_segmenter(f"local-dir:{folder}")
    assert seg.record.arch == "box3d"
    volume = read_image(tmp_path / "v3_ct.nii.gz")
    truth = read_image(tmp_path / "v3_seg.nii.gz").array == 1
    key = int(truth.sum((1, 2)).argmax())
    ys, xs = np.nonzero(truth[key])
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    outcome = segment(seg, volume, [box], slice_index=key, propagate=True)
    assert outcome.mask.shape == truth.shape and outcome.volume is not None
    with pytest.raises(InputContractError, match="segments whole volumes"):
        segment(seg, volume.slice(key), [box])
    with pytest.raises(InputContractError, match="bf16"):
        open_segmenter(f"local-dir:{folder}", precision="bf16")

    out = tmp_path / "mask.nii.gz"
    args = ["segment", str(tmp_path / "v3_ct.nii.gz"), "--model", f"local-dir:{folder}", "--slice", str(key),
            "--box", ",".join(str(v) for v in box), "--propagate", "--out", str(out)]
    assert main(args) == 0
    written = read_image(out).array > 0
    assert written.shape == truth.shape and (written == outcome.mask).all()
    assert main([*args[:-1], str(tmp_path / "other.nii.gz"), "--tta", "logits"]) != 0
    assert "do not apply" in capsys.readouterr().err
    assert not (tmp_path / "other.nii.gz").exists()
