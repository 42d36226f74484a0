"""Writers: geometry kept, windows applied, nothing overwritten, nothing partial left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medfoundry.errors import ImageWriteError, OutputExistsError
from medfoundry.files import atomic_output
from medfoundry.io import get_window, read_image, write_image

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def test_png_through_a_window(tmp_path: Path) -> None:
    image = read_image(CT)
    out = write_image(image, tmp_path / "ct.png", window=get_window("lung"))
    pixels = np.asarray(Image.open(out))
    np.testing.assert_array_equal(pixels, get_window("lung").to_uint8(image.array))


def test_existing_output_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "ct.npy"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        write_image(read_image(CT), target)
    assert target.read_bytes() == b"precious"
    write_image(read_image(CT), target, overwrite=True)
    np.testing.assert_array_equal(np.load(target), read_image(CT).array)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_volume_to_png_needs_a_slice(tmp_path: Path) -> None:
    vol = read_image(CT)
    vol.array = np.stack([vol.array] * 3)
    vol.spacing = (2.0, *vol.spacing)
    vol.direction = np.column_stack([np.cross(vol.direction[:, 1], vol.direction[:, 0]), vol.direction])
    with pytest.raises(ImageWriteError, match="slice"):
        write_image(vol, tmp_path / "v.png")
    assert not (tmp_path / "v.png").exists()
    write_image(vol, tmp_path / "v.png", slice_index=1)
    assert np.asarray(Image.open(tmp_path / "v.png")).shape == vol.array.shape[1:]


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ImageWriteError, match=r"\.nii\.gz"):
        write_image(read_image(CT), tmp_path / "x.bmp")


def test_dicom_series_to_nifti_keeps_geometry(shared_data: Path, tmp_path: Path) -> None:
    series = read_image(shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom")
    out = write_image(series, tmp_path / "ct.nii.gz")
    again = read_image(out)
    np.testing.assert_array_equal(again.array, series.array)
    np.testing.assert_allclose(again.affine, series.affine, atol=1e-4)
    assert again.orientation == "LPS"
    # the TotalSegmentator label map, written by another tool from the same series, shares the world frame
    labels = read_image(shared_data / "totalsegmentator_examples" / "nifti" / "example_seg_dicom.nii.gz")
    corners = np.array([[0, 0, 0, 1], [19, 511, 511, 1]]).T
    world_ct = again.affine @ corners
    flipped = np.array([[0, 511, 0, 1], [19, 0, 511, 1]]).T  # the label map runs its Y axis anterior
    np.testing.assert_allclose(labels.affine @ flipped, world_ct, atol=1e-2)
