"""DICOM reading against pydicom's own decoding, the shared CT series, and every error path."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medfoundry.errors import ImageReadError
from medfoundry.io import read_image
from medfoundry.io.dicom import PHI_KEYWORDS, read_dicom_series

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pixel_files() -> list[Path]:
    out = []
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=False)
        except Exception:
            continue
        if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            out.append(path)
    return out


PIXEL_FILES = _pixel_files()


def _reference(path: Path) -> np.ndarray | None:
    """pydicom's own values after the modality LUT (palette expanded, MONOCHROME1 inverted); None if pydicom
    cannot decode the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
        try:
            arr = ds.pixel_array
        except Exception:
            return None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return apply_color_lut(arr, ds)
    if ds.get("SamplesPerPixel", 1) > 1:
        return arr
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if photometric == "MONOCHROME1":
        bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        values = lo + hi - values
    return values


def test_enough_pydicom_files_are_exercised() -> None:
    decodable = [p for p in PIXEL_FILES if _reference(p) is not None]
    assert len(PIXEL_FILES) >= 90
    assert len(decodable) >= 85


@pytest.mark.parametrize("path", PIXEL_FILES, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_pixels_equal_pydicom(path: Path) -> None:
    expected = _reference(path)
    if expected is None:
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert path.name in str(info.value)
        return
    image = read_image(path)
    np.testing.assert_allclose(image.array.astype(np.float64), expected.astype(np.float64), rtol=1e-6, atol=1e-4)
    assert image.array.shape == expected.shape
    assert not any(k in image.meta for k in PHI_KEYWORDS)


def test_missing_file_meta_is_recovered_for_native_pixels(tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    expected = apply_modality_lut(ds.pixel_array, ds)
    bare = tmp_path / "bare.dcm"
    del ds.file_meta
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"  # no preamble, no file meta
    np.testing.assert_array_equal(read_image(bare).array, expected)


def test_compressed_pixels_without_transfer_syntax_are_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm")
    bare = tmp_path / "bare_rle.dcm"
    del ds.file_meta
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False, implicit_vr=False, little_endian=True)
    with pytest.raises(ImageReadError, match="compressed"):
        read_image(bare)


def test_ct_small_in_hounsfield_units_with_geometry() -> None:
    image = read_image(TEST_FILES / "CT_small.dcm")
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert image.units == "HU" and image.modality == "CT"
    assert image.spacing == tuple(float(s) for s in ds.PixelSpacing)
    assert image.origin == tuple(float(x) for x in ds.ImagePositionPatient)
    np.testing.assert_array_equal(image.array, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert image.phi["PatientName"] == str(ds.PatientName)
    assert "phi" not in image.summary() and image.summary(show_phi=True)["phi"]["PatientID"] == ds.PatientID


def test_multiframe_has_frames_first() -> None:
    dose = read_image(TEST_FILES / "rtdose.dcm")
    assert dose.array.shape == (15, 10, 10) and dose.is_volume
    ds = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    offsets = [float(o) for o in ds.GridFrameOffsetVector]
    assert dose.spacing[0] == pytest.approx(abs(offsets[1] - offsets[0]))
    colour = read_image(TEST_FILES / "examples_ybr_color.dcm")
    assert colour.array.shape[0] == 30 and colour.array.shape[-1] == 3 and colour.is_color and colour.is_volume


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    path = TEST_FILES / "MR_small.dcm"
    image = read_image(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    tmp = Path(pytest.importorskip("tempfile").mkdtemp()) / "mono1.dcm"
    ds.save_as(tmp)
    inverted = read_image(tmp)
    bits = int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    np.testing.assert_array_equal(inverted.array.astype(np.int64), lo + hi - image.array.astype(np.int64))
    assert inverted.photometric == "MONOCHROME2"
    shutil.rmtree(tmp.parent)


def test_window_from_header_and_voi_lut(tmp_path: Path) -> None:
    image = read_image(TEST_FILES / "MR_small.dcm")
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    assert image.window is not None
    assert (image.window.center, image.window.width) == (float(ds.WindowCenter), float(ds.WindowWidth))
    # a VOI LUT sequence without centre/width: the window spans the LUT's input range
    del ds.WindowCenter, ds.WindowWidth
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 100, 8]
    item.add_new(0x00283006, "US", list(range(256)))
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "voi.dcm")
    voi = read_image(tmp_path / "voi.dcm").window
    assert voi is not None and (voi.low, voi.high) == (100, 356)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.dcm", "no such file"),
        (lambda d: _write(d / "empty.dcm", b""), "empty file"),
        (lambda d: _write(d / "junk.dcm", b"not a dicom file at all " * 10), "DICOM"),
        (lambda d: _truncate(TEST_FILES / "CT_small.dcm", d / "cut.dcm", 0.5), "truncated"),
        (lambda d: TEST_FILES / "MR_truncated.dcm", "cannot decode"),
        (lambda d: TEST_FILES / "rtplan.dcm", "no pixel data"),
    ],
)
def test_bad_files_raise_read_error(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert reason.lower() in str(info.value).lower()


def test_folder_with_two_series_is_refused(tmp_path: Path) -> None:
    shutil.copy(TEST_FILES / "CT_small.dcm", tmp_path / "a.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", tmp_path / "b.dcm")
    with pytest.raises(ImageReadError, match="2 series"):
        read_image(tmp_path)
    ct_uid = str(pydicom.dcmread(tmp_path / "a.dcm").SeriesInstanceUID)
    assert read_image(tmp_path, series_uid=ct_uid).modality == "CT"


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no DICOM"):
        read_image(tmp_path)


def test_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_MAX_FILE_BYTES", "1000")
    with pytest.raises(ImageReadError, match="limit"):
        read_image(TEST_FILES / "CT_small.dcm")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# -- the shared CT series -------------------------------------------------------------------------------------
def test_shared_ct_series_volume(shared_data: Path) -> None:
    folder = shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom"
    image = read_dicom_series(folder)
    assert image.array.shape == (20, 512, 512)
    assert image.units == "HU" and image.orientation == "LPS"
    np.testing.assert_allclose(image.spacing, (2.0, 0.9765625, 0.9765625), rtol=1e-5)
    assert image.meta["slice_spacing_uniform"]
    # independent reference: pydicom per file, sorted by z position, modality LUT applied
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    expected = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    np.testing.assert_array_equal(image.array, expected)
    assert -1100 <= image.array.min() <= -1000  # air in HU
    assert image.origin == pytest.approx(tuple(float(x) for x in datasets[0].ImagePositionPatient))


def test_shared_ct_series_aligns_with_its_label_map(shared_data: Path) -> None:
    """The TotalSegmentator label map (NIfTI) of the series must land on the same voxels in world space."""
    ct = read_image(shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom")
    labels = read_image(shared_data / "totalsegmentator_examples" / "nifti" / "example_seg_dicom.nii.gz")
    assert labels.array.shape == ct.array.shape
    # map every label voxel's index to world and back into the CT's index space
    to_ct = np.linalg.inv(ct.affine) @ labels.affine
    perm = np.abs(np.round(to_ct[:3, :3])).argmax(axis=1)
    flips = np.sign(np.round(to_ct[:3, :3])[np.arange(3), perm])
    aligned = np.transpose(labels.array, perm)
    for axis, flip in enumerate(flips):
        if flip < 0:
            aligned = np.flip(aligned, axis)
    organs = aligned > 0
    assert organs.any()
    assert ct.array[organs].mean() > -200  # labelled organs are soft tissue or bone
    assert ct.array[~organs].mean() < ct.array[organs].mean() - 150
