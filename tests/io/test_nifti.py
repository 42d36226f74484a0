"""NIfTI and other nibabel formats against nibabel itself: values, axes and geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfoundry.errors import ImageReadError
from medfoundry.io import read_image, write_image

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
SUFFIXES = (".nii", ".nii.gz", ".mnc", ".mgz", ".hdr", ".par")
FILES = sorted(p for p in NIB_DATA.iterdir() if p.name.lower().endswith(SUFFIXES))
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _reference(path: Path):
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = img.affine
    except Exception:
        return None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        return None
    return data, affine


def test_enough_nibabel_files() -> None:
    readable = [p for p in FILES if _reference(p) is not None]
    assert len(FILES) >= 20 and len(readable) >= 6


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_values_and_affine_equal_nibabel(path: Path) -> None:
    ref = _reference(path)
    if ref is None:
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert path.name in str(info.value)
        return
    data, affine = ref
    image = read_image(path)
    # medfoundry stores (k, j, i) in LPS; undo both to compare with nibabel's (i, j, k) in RAS
    np.testing.assert_allclose(np.transpose(image.array, (2, 1, 0)), data, rtol=1e-6)
    ras = FLIP @ image.affine
    ras[:3, :3] = ras[:3, :3][:, ::-1]
    np.testing.assert_allclose(ras, affine, atol=1e-4)


def test_orientation_codes_match_nibabel() -> None:
    for name in ("anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"):
        img = nib.load(str(NIB_DATA / name))
        expected = "".join(nib.aff2axcodes(img.affine))  # RAS+ codes of the i, j, k axes = X, Y, Z
        assert read_image(NIB_DATA / name).orientation == expected


def test_nifti_round_trip_keeps_values_and_geometry(tmp_path: Path) -> None:
    image = read_image(NIB_DATA / "reoriented_anat_moved.nii")
    out = write_image(image, tmp_path / "copy.nii.gz")
    again = read_image(out)
    np.testing.assert_array_equal(again.array, image.array)
    np.testing.assert_allclose(again.affine, image.affine, atol=1e-5)


def test_4d_series_is_refused() -> None:
    with pytest.raises(ImageReadError, match="4D"):
        read_image(NIB_DATA / "example4d.nii.gz")


def test_corrupt_nifti(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(ImageReadError, match=r"bad\.nii\.gz"):
        read_image(bad)


def test_shared_ct_nifti_in_hu(shared_data: Path) -> None:
    path = shared_data / "totalsegmentator_examples" / "nifti" / "example_ct_sm.nii.gz"
    image = read_image(path)
    ref = nib.load(str(path))
    assert image.array.shape == ref.shape[::-1]
    np.testing.assert_allclose(image.spacing, ref.header.get_zooms()[::-1])
    assert image.array.min() >= -1100 and image.array.max() > 200
