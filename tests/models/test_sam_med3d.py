"""SAM-Med3D runs through its reference package (medim) and matches SAM-Med3D's own inference chain.

A small SAM-Med3D (2 encoder blocks, width 48; medim's network) is randomly initialised and saved as the
published checkpoint is (``{"model_state_dict": ...}``). The reference chain is SAM-Med3D's
``utils/infer_utils``: TorchIO ``Resample(1.5)``, ``ToCanonical``, ``CropOrPad(128, mask)``,
``ZNormalization(x > 0)``, the centre click on the crop, and ``Resample`` (nearest) back to the input grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.io import read_image
from medfoundry.registry import get_record

pytest.importorskip("medim")
tio = pytest.importorskip("torchio")
nib = pytest.importorskip("nibabel")

TINY = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
        "prompt_embed_dim": 96}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from medfoundry.models.sam_med3d import build_sam_med3d

    torch.manual_seed(0)
    model = build_sam_med3d(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("sam-med3d") / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A smooth CT-like volume, 0.9 × 0.8 × 3 mm, stored with a flipped first axis (not RAS)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(0)
    coarse = rng.normal(0, 300, (8, 7, 5)).astype(np.float32)
    data = zoom(coarse, (70 / 8, 64 / 7, 24 / 5), order=1)[:70, :64, :24] + 40.0
    affine = np.diag([-0.9, 0.8, 3.0, 1.0])
    affine[:3, 3] = (30.0, -20.0, 10.0)
    path = tmp_path_factory.mktemp("vol") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _segmenter(checkpoint: Path):
    from medfoundry.predict.sam_med3d import load_sam_med3d_segmenter

    record = dataclasses.replace(get_record("sam-med3d-turbo"), arch_config=TINY)
    return load_sam_med3d_segmenter(record, checkpoint)


def test_network_equals_medim(checkpoint: Path) -> None:
    import medim

    from medfoundry.models.sam_med3d import decode

    ours = _segmenter(checkpoint).model
    reference = medim.create_model("SAM-Med3D", pretrained=True, checkpoint_path=str(checkpoint), **TINY).eval()
    x = torch.randn(1, 1, 128, 128, 128)
    points, labels = torch.tensor([[[64.0, 60.0, 70.0], [20.0, 90.0, 64.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        emb_ref = reference.image_encoder(x)
        emb = ours.image_encoder(x)
        assert torch.allclose(emb, emb_ref, atol=1e-4)
        previous = torch.zeros(1, 1, 32, 32, 32)
        sparse, dense = reference.prompt_encoder(points=[points, labels], boxes=None, masks=previous)
        low_ref, _ = reference.mask_decoder(image_embeddings=emb_ref, image_pe=reference.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        low, full = decode(ours, emb, points, labels)
    assert torch.allclose(low, low_ref, atol=1e-4)
    ref_full = F.interpolate(low_ref, size=(128, 128, 128), mode="trilinear", align_corners=False)
    assert torch.allclose(full, ref_full, atol=1e-4)


def _reference_chain(model, path: Path, centre_ras: tuple[int, int, int]):
    """SAM-Med3D's infer_utils chain with TorchIO, the label a single voxel placed after canonicalisation."""
    subject = tio.Subject(image=tio.ScalarImage(path))
    original = tio.ScalarImage(path)
    canonical = tio.ToCanonical()(tio.Resample(target=(1.5, 1.5, 1.5))(subject))
    label = torch.zeros((1, *canonical.spatial_shape), dtype=torch.uint8)
    label[(0, *centre_ras)] = 1
    canonical.add_image(tio.LabelMap(tensor=label, affine=canonical.image.affine), "label")
    cropped = tio.CropOrPad(mask_name="label", target_shape=(128, 128, 128))(canonical)
    roi = tio.ZNormalization(masking_method=lambda x: x > 0)(cropped.image.data.clone())
    roi = roi[None]  # (1, 1, 128, 128, 128)
    with torch.no_grad():  # sam_model_infer without ground truth: one centre click
        emb = model.image_encoder(roi)
        sparse, dense = model.prompt_encoder(points=[torch.tensor([[[64.0, 64.0, 64.0]]]), torch.tensor([[1]])],
                                             boxes=None, masks=torch.zeros(1, 1, 32, 32, 32))
        low, _ = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        full = F.interpolate(low, size=(128, 128, 128), mode="trilinear", align_corners=False)
    roi_mask = (torch.sigmoid(full) > 0.5)[0].float()
    back = tio.Resample(target=original, image_interpolation="nearest")(
        tio.LabelMap(tensor=roi_mask, affine=cropped.image.affine))
    return roi[0, 0].numpy(), full[0, 0].numpy(), back.data[0].numpy().transpose(2, 1, 0) > 0.5


def test_volume_segmentation_matches_reference_chain(checkpoint: Path, volume: Path) -> None:
    from medfoundry.predict.sam_med3d import centred_grid

    segmenter = _segmenter(checkpoint)
    image = read_image(volume)
    # a foreground point in the original (Z, Y, X) array that lands on resampled RAS voxel `centre`
    centre = (20, 22, 30)
    from medfoundry.predict.volume_encoder import to_ras

    ras, spacing = to_ras(image)
    ras_point = [centred_grid(n, s, 1.5)[1] + c * centred_grid(n, s, 1.5)[2]
                 for n, s, c in zip(ras.shape, spacing, centre, strict=True)]
    # RAS (X, Y, Z) → array (Z, Y, X): this file flips its first NIfTI axis (X), so array X = n - 1 - RAS X
    point = np.array([[ras_point[2], ras_point[1], ras.shape[0] - 1 - ras_point[0]]])
    crop, pts, _ = segmenter.prepare(image, point)
    ref_crop, ref_logits, ref_mask = _reference_chain(segmenter.model, volume, centre)
    assert crop.shape == ref_crop.shape == (128, 128, 128)
    assert float(np.abs(crop - ref_crop).max()) <= 1e-4
    np.testing.assert_allclose(pts[0], [64.0, 64.0, 64.0], atol=1e-6)
    result = segmenter.segment(image, point)
    assert float(np.abs(result.crop_logits - ref_logits).max()) <= 1e-4
    assert result.mask.shape == image.array.shape == ref_mask.shape
    assert ref_mask.any() and not ref_mask.all()
    iou = (result.mask & ref_mask).sum() / (result.mask | ref_mask).sum()
    assert iou >= 0.99


def test_wrong_inputs_are_typed_errors(checkpoint: Path, volume: Path, tmp_path: Path) -> None:
    segmenter = _segmenter(checkpoint)
    image = read_image(volume)
    with pytest.raises(InputContractError, match="inside the volume"):
        segmenter.segment(image, [[5, 5, 500]])
    with pytest.raises(InputContractError, match="foreground"):
        segmenter.segment(image, [[5, 5, 5]], labels=[0])
    np.save(tmp_path / "slice.npy", np.zeros((40, 40), np.float32))
    with pytest.raises(InputContractError):
        segmenter.segment(read_image(tmp_path / "slice.npy"), [[0, 5, 5]])
    gapped = dataclasses.replace(image, meta={**image.meta, "slice_spacing_uniform": False})  # as io.dicom marks it
    with pytest.raises(InputContractError, match="evenly spaced"):
        segmenter.segment(gapped, [[5, 5, 5]])
    no_spacing = dataclasses.replace(image, meta={**image.meta, "spacing_source": "default (1 mm)"})
    with pytest.raises(InputContractError, match="no voxel spacing"):
        segmenter.segment(no_spacing, [[5, 5, 5]])
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, tmp_path / "cut.pth")
    from medfoundry.predict.sam_med3d import load_sam_med3d_segmenter

    record = dataclasses.replace(get_record("sam-med3d-turbo"), arch_config=TINY)
    with pytest.raises(WeightsError, match="missing"):
        load_sam_med3d_segmenter(record, tmp_path / "cut.pth")


def test_cli_segments_a_volume_in_3d(checkpoint: Path, volume: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``medfoundry segment VOLUME --model M --slice K --point x,y --propagate`` with a SAM-Med3D record writes
    the mask of SamMed3DSegmenter.segment (proven equal to SAM-Med3D's own chain above) for the voxel
    (K, y, x), on the volume's grid; boxes, a missing --propagate and 2D images are typed errors."""
    import json

    from medfoundry.cli.main import main
    from medfoundry.registry import catalog
    from medfoundry.registry.formats import sniffed_arch

    assert sniffed_arch(checkpoint) == ("sam-med3d", "sam_med3d")  # --weights of the published layout is accepted
    record = dataclasses.replace(get_record("sam-med3d-turbo"), name="sam-med3d-tiny-test", aliases=(),
                                 arch_config=TINY)
    monkeypatch.setitem(catalog._RECORDS, record.name, record)
    image = read_image(volume)
    expected = _segmenter(checkpoint).segment(image, [[12, 30, 34]], [1]).mask
    assert expected.any() and not expected.all()
    out = tmp_path / "mask.nii.gz"
    argv = ["segment", str(volume), "--model", record.name, "--weights", str(checkpoint), "--slice", "12",
            "--point", "34,30", "--propagate"]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    written = read_image(out)
    assert written.array.shape == image.array.shape and np.array_equal(written.array.astype(bool), expected)
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)
    assert report["pixels"] == int(expected.sum())
    np.save(tmp_path / "slice.npy", np.zeros((40, 40), np.float32))
    bad = tmp_path / "bad.nii.gz"
    for args, message in (([*argv, "--box", "5,5,20,20"], "prompted with points"),
                          ([a for a in argv if a != "--propagate"], "whole volumes"),
                          ([str(tmp_path / "slice.npy"), *argv[2:]], "whole volumes"),
                          ([*argv, "--fast-prompts"], "do not apply")):
        code = main(["segment", *args[1:], "--out", str(bad)] if args[0] == "segment" else
                    ["segment", *args, "--out", str(bad)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err and not bad.exists(), (args, err)


def test_open_segmenter_gives_the_sam_med3d_segmenter(checkpoint: Path, volume: Path, monkeypatch) -> None:
    """``open_segmenter`` on a SAM-Med3D record (as the CLI's ``segment --model sam-med3d-turbo`` does) returns
    SamMed3DSegmenter: the flow segments a volume with it, and 2D use says how to run it (typed)."""
    from medfoundry.predict.sam_med3d import SamMed3DSegmenter
    from medfoundry.predict.segment import load_segmenter, open_segmenter
    from medfoundry.registry import catalog
    from medfoundry.tasks.segmentation import segment

    record = dataclasses.replace(get_record("sam-med3d-turbo"), name="sam-med3d-tiny-test", aliases=(),
                                 arch_config=TINY)
    monkeypatch.setitem(catalog._RECORDS, record.name, record)
    segmenter = open_segmenter(record.name, checkpoint)
    assert isinstance(segmenter, SamMed3DSegmenter) and isinstance(load_segmenter(record, checkpoint),
                                                                   SamMed3DSegmenter)
    image = read_image(volume)
    outcome = segment(segmenter, image, points=[[34, 30]], slice_index=12, propagate=True)  # = segment() at (12,30,34)
    assert outcome.mask.shape == image.array.shape and outcome.mask.any() and not outcome.mask.all()
    for call in (lambda: segmenter.set_image(image.slice(12)), lambda: segmenter.predict(points=[[34, 30]])):
        with pytest.raises(InputContractError, match=r"--slice K --point x,y --propagate"):
            call()
    with pytest.raises(InputContractError, match="whole volumes"):
        segment(segmenter, image.slice(12), points=[[34, 30]])
