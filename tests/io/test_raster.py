"""PNG/JPEG/TIFF and NumPy readers: bit depths, colour, geometry tags, and refusing pickles."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medfoundry.errors import ImageReadError
from medfoundry.io import read_image, write_image

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("array", "suffix"),
    [
        (RNG.integers(0, 256, (20, 30), dtype=np.uint8), ".png"),
        (RNG.integers(0, 65536, (20, 30), dtype=np.uint16), ".png"),
        (RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), ".png"),
        (RNG.integers(0, 256, (20, 30), dtype=np.uint8), ".tif"),
        (RNG.integers(0, 65536, (20, 30), dtype=np.uint16), ".tiff"),
        (RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), ".tif"),
    ],
)
def test_lossless_rasters_round_trip_exactly(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"img{suffix}"
    if suffix == ".png":
        Image.fromarray(array).save(path)
    else:
        tifffile.imwrite(path, array)
    image = read_image(path)
    np.testing.assert_array_equal(image.array, array)
    assert image.is_color == (array.ndim == 3)
    assert image.spatial_shape == (20, 30)


def test_rgba_png_drops_alpha_and_jpeg_reads(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").array, rgba[..., :3])
    Image.fromarray(rgba[..., :3]).save(tmp_path / "a.jpg", quality=95)
    jpeg = read_image(tmp_path / "a.jpg")
    assert jpeg.array.shape == (16, 16, 3) and jpeg.photometric == "RGB"


def test_tiff_resolution_gives_spacing(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "r.tif", arr, resolution=(40.0, 20.0), resolutionunit="CENTIMETER")
    image = read_image(tmp_path / "r.tif")
    assert image.spacing == pytest.approx((0.5, 0.25))  # 20 px/cm in y, 40 px/cm in x


def test_npy_and_npz(tmp_path: Path) -> None:
    vol = RNG.normal(size=(4, 8, 9)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    np.testing.assert_array_equal(read_image(tmp_path / "v.npy").array, vol)
    np.savez(tmp_path / "medsam.npz", imgs=vol, gts=vol > 0, spacing=np.array([0.7, 0.7, 5.0]))
    image = read_image(tmp_path / "medsam.npz")
    assert image.spacing == (5.0, 0.7, 0.7)  # MedSAM files store (x, y, z)
    np.savez(tmp_path / "two.npz", a=vol, b=vol)
    with pytest.raises(ImageReadError, match="choose one"):
        read_image(tmp_path / "two.npz")
    assert read_image(tmp_path / "two.npz", key="b").array.shape == (4, 8, 9)


def test_npz_written_by_medfoundry_keeps_geometry(tmp_path: Path) -> None:
    vol = RNG.normal(size=(3, 5, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    image = read_image(tmp_path / "v.npy")
    image.spacing = (2.5, 0.5, 0.75)
    image.origin = (10.0, -4.0, 3.0)
    out = write_image(image, tmp_path / "g.npz")
    again = read_image(out)
    assert again.spacing == (2.5, 0.5, 0.75) and again.origin == (10.0, -4.0, 3.0)
    np.testing.assert_allclose(again.affine, image.affine)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match=r"obj\.npy"):
        read_image(tmp_path / "obj.npy")


@pytest.mark.parametrize("name", ["bad.png", "bad.jpg", "bad.tif", "bad.npz"])
def test_corrupt_rasters(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 if name.endswith(".png") else b"\x00garbage" * 9)
    with pytest.raises(ImageReadError, match=re.escape(name)):
        read_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"t\.png"):
        read_image(tmp_path / "t.png")


def test_every_shared_image_reads(shared_data: Path) -> None:
    suffixes = (".dcm", ".png", ".jpg", ".jpeg", ".nii.gz", ".npz")
    paths = sorted(p for p in shared_data.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
    assert len(paths) > 1800
    for path in paths:
        if path.name == "pneumoniamnist_balanced_trainval.npz":  # a stack of 28×28 images, one key per split
            for key in ("train_images", "val_images"):
                assert read_image(path, key=key).array.shape[1:] == (28, 28)
            continue
        image = read_image(path)
        assert image.array.size > 0, path
