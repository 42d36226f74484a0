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


def test_cli_segment_propagate_runs_the_video_predictor(checkpoint: Path, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    """``medfoundry segment VOLUME --model M --slice K --box ... --propagate`` with a MedSAM2 record runs
    Sam2Segmenter.segment_volume (the sam2 video predictor, proven equal to the reference above), never
    medfoundry's box propagation, and writes that mask on the volume's grid."""
    import json

    import nibabel as nib

    import medfoundry.tasks.segmentation as flow
    from medfoundry.cli.main import main
    from medfoundry.io import read_image
    from medfoundry.predict.medsam2 import Sam2Segmenter
    from medfoundry.registry import catalog

    record = dataclasses.replace(_record(), name="medsam2-tiny-test", aliases=())
    catalog.get_record("medsam2")  # the catalogue is loaded before a test record joins it
    monkeypatch.setitem(catalog._RECORDS, record.name, record)
    volume = _volume()
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), np.diag([0.8, 0.8, 3.0, 1.0])), path)
    calls: list = []
    real = Sam2Segmenter.segment_volume

    def spy(self, image, key_slice, box, window=None):
        calls.append((key_slice, np.asarray(box).tolist(), real(self, image, key_slice, box, window)))
        return calls[-1][2]

    def refuse(*_, **__):
        raise AssertionError("MedSAM2 must not go through medfoundry's box propagation")

    monkeypatch.setattr(Sam2Segmenter, "segment_volume", spy)
    monkeypatch.setattr(flow, "segment_volume", refuse)
    out = tmp_path / "mask.nii.gz"
    argv = ["segment", str(path), "--model", record.name, "--weights", str(checkpoint), "--slice", "2",
            "--box", "14,18,44,46", "--propagate", "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 and calls[0][0] == 2 and calls[0][1] == BOX.tolist()
    written = read_image(out).array.astype(bool)
    assert written.shape == volume.array.shape and np.array_equal(written, calls[0][2])
    assert report["mask"] == str(out) and report["pixels"] == int(calls[0][2].sum()) > 0
    # wrong inputs: typed one-line errors, nothing written
    for extra, message in ((["--point", "20,30"], "one box"), (["--precision", "bf16"], "do not apply"),
                           (["--tta"], "do not apply")):
        bad = tmp_path / "bad.nii.gz"
        code = main([*argv[:-3], *extra, "--out", str(bad)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err and not bad.exists()


def test_cli_segment_2d_runs_the_image_predictor(checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``medfoundry segment IMAGE --model M --box ...`` with a MedSAM2 record writes the mask of the sam2 image
    predictor (Sam2Segmenter.predict, proven equal to SAM2ImagePredictor above) for that box."""
    from medfoundry.cli.main import main
    from medfoundry.io import read_image
    from medfoundry.predict.medsam2 import load_sam2_segmenter
    from medfoundry.registry import catalog

    record = dataclasses.replace(_record(), name="medsam2-tiny-test", aliases=())
    catalog.get_record("medsam2")
    monkeypatch.setitem(catalog._RECORDS, record.name, record)
    np.save(tmp_path / "slice.npy", _volume().array[2])
    image = read_image(tmp_path / "slice.npy")
    segmenter = load_sam2_segmenter(record, checkpoint)
    segmenter.set_image(image)
    expected = segmenter.predict(boxes=BOX[None]).best().any(axis=0)
    assert expected.any() and not expected.all()
    out = tmp_path / "mask.npy"
    assert main(["segment", str(tmp_path / "slice.npy"), "--model", record.name, "--weights", str(checkpoint),
                 "--box", "14,18,44,46", "--out", str(out)]) == 0
    capsys.readouterr()
    assert np.array_equal(np.load(out).astype(bool), expected)
