"""The one segmentation flow (tasks/segmentation.py): the same prompt gives the same mask and measurements
whether it comes through the library, the CLI or the evaluation harness."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfoundry.errors import InputContractError
from medfoundry.io import MedImage, read_image
from medfoundry.predict.segment import open_segmenter
from medfoundry.tasks.segmentation import segment, segment_file, split_points, write_mask


@pytest.fixture(scope="module")
def seg():
    return open_segmenter("medfoundry-sam-lite", precision="fp32")


def _ct(depth: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    hu = rng.normal(-50, 20, (depth, 96, 96)).astype(np.int16)
    zz, yy, xx = np.mgrid[0:depth, 0:96, 0:96]
    hu[((yy - 48) / 18.0) ** 2 + ((xx - 44) / 22.0) ** 2 + ((zz - depth // 2) / 2.5) ** 2 < 1] = 120
    return hu


def test_2d_flow_matches_the_predictor(seg) -> None:
    image = MedImage(array=_ct()[2], spacing=(0.8, 0.8), modality="CT", units="HU")
    box = [20.0, 28.0, 68.0, 70.0]
    outcome = segment(seg, image, [box], points=[[44, 48]])
    seg.set_image(image)
    direct = seg.predict(boxes=np.array([box]), points=np.array([[44.0, 48.0]]), point_labels=np.array([1]))
    assert np.array_equal(outcome.mask, direct.best()[0]) and outcome.mask.any()
    assert outcome.measurement.pixels == int(outcome.mask.sum())
    assert outcome.measurement.area_mm2 == pytest.approx(outcome.mask.sum() * 0.64)
    assert outcome.volume is None and outcome.image is image


def test_3d_flow_and_file_round_trip(seg, tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(_ct().T, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    outcome, image = segment_file(seg, str(tmp_path / "ct.nii.gz"), [[20.0, 28.0, 68.0, 70.0]], slice_index=2,
                                  propagate=True, out=tmp_path / "mask.nii.gz")
    assert outcome.mask.shape == image.spatial_shape and outcome.volume is not None
    assert outcome.mask[2].any() and outcome.measurement.volume_ml is not None
    written = read_image(str(tmp_path / "mask.nii.gz"))
    assert np.array_equal(written.array > 0, outcome.mask) and written.spacing == image.spacing
    with pytest.raises(InputContractError, match="3D mask cannot be a PNG"):
        write_mask(outcome, tmp_path / "mask.png")


@pytest.mark.parametrize("case", ["volume without slice", "propagate 2D", "two boxes in 3D", "bad point"])
def test_flow_refuses_what_it_cannot_do(seg, case: str) -> None:
    volume = MedImage(array=_ct(), spacing=(2.0, 0.8, 0.8), modality="CT", units="HU")
    box = [20.0, 28.0, 68.0, 70.0]
    with pytest.raises(InputContractError):
        if case == "volume without slice":
            segment(seg, volume, [box])
        elif case == "propagate 2D":
            segment(seg, volume.slice(2), [box], propagate=True)
        elif case == "two boxes in 3D":
            segment(seg, volume, [box, box], slice_index=2, propagate=True)
        else:
            split_points([[1.0]])
