"""Readers for ordinary raster files (PNG, JPEG, BMP, TIFF) and NumPy arrays (``.npy``/``.npz``).

Raster images carry no patient geometry: spacing is 1 mm per pixel unless the file says otherwise (TIFF
resolution tags in cm/inch are honoured), origin 0, axis-aligned. Greyscale 8/16-bit stays single-channel; RGB
stays RGB (alpha dropped); palette images are expanded to RGB.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from medfoundry.errors import ImageReadError
from medfoundry.io.image import MedImage
from medfoundry.io.limits import check_declared, check_expanded


def read_raster(path: str | Path) -> MedImage:
    """Read a PNG/JPEG/BMP/GIF with Pillow, or a TIFF with tifffile."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff(path)
    from PIL import Image

    try:
        with Image.open(path) as im:
            # the header's size bounds the decoded pixels (and any zlib/LZW expansion): check before decoding
            check_declared(path, (im.size[1], im.size[0], max(len(im.getbands()), 3)), 4 if im.mode in
                           ("I", "F", "I;32", "RGBA") else 2 if im.mode.startswith("I;16") else 1, "image")
            im.load()
            if im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
                im = im.convert("RGB" if im.mode != "LA" else "L")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow's plugins raise many types on corrupt files (UnidentifiedImageError, ...)
        raise ImageReadError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
    return _from_array(arr, path, {"format": path.suffix.lower().lstrip(".")})


def _read_tiff(path: Path) -> MedImage:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not len(tif.series):
                raise ImageReadError(path, "TIFF has no image series")
            series = tif.series[0]
            whole = series.ndim <= 3
            shape = series.shape if whole else tif.pages[0].shape
            check_declared(path, shape, np.dtype(series.dtype).itemsize if series.dtype is not None else 8,
                           "TIFF image")
            arr = tif.asarray() if whole else tif.asarray(key=0)
            spacing = _tiff_spacing(page)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    img = _from_array(arr, path, {"format": "tiff"})
    if spacing is not None and img.spatial_ndim == 2:
        img.spacing = spacing
        img.meta["spacing_source"] = "tiff resolution tags"
    return img


def _tiff_spacing(page) -> tuple[float, float] | None:
    """(dy, dx) in mm from TIFF XResolution/YResolution when the unit is inch or centimetre."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    if unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    per_mm = {2: 25.4, 3: 10.0}.get(int(unit.value))
    if per_mm is None:
        return None
    xn, xd = tags["XResolution"].value
    yn, yd = tags["YResolution"].value
    if not (xn and yn and xd and yd):
        return None
    return (per_mm * yd / yn, per_mm * xd / xn)


def _from_array(arr: np.ndarray, path: Path, meta: dict) -> MedImage:
    color = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr, color = arr[..., 0], False
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"unsupported raster layout {arr.shape}")
    if color and arr.shape[-1] == 4:
        arr = arr[..., :3]
    ndim_spatial = arr.ndim - (1 if color else 0)
    return MedImage(
        array=np.ascontiguousarray(arr),
        spacing=(1.0,) * ndim_spatial,
        photometric="RGB" if color else "MONOCHROME2",
        modality="OT",
        meta={**meta, "spacing_source": "default (1 mm; raster has no geometry)"},
        source=str(path),
    )


def _check_npy_header(path: Path, fh) -> None:
    """Refuse an ``.npy`` stream whose header declares more than the configured limit (or is not an array of
    plain values)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, dtype = reader(fh)
    except (ValueError, EOFError, SyntaxError, TypeError, KeyError) as exc:
        raise ImageReadError(path, f"not a NumPy array file ({type(exc).__name__}: {exc})") from exc
    if dtype.hasobject:
        raise ImageReadError(path, "NumPy array of Python objects (pickles) is refused")
    check_declared(path, shape, dtype.itemsize, "NumPy array")


def _check_npz(path: Path) -> None:
    """Refuse an ``.npz`` whose members declare more than the configured expansion, or whose arrays declare
    more than the image limit, before anything is decompressed."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        check_expanded(path, sum(i.file_size for i in infos), "npz archive")
        for info in infos:
            if info.filename.endswith(".npy"):
                with z.open(info) as fh:
                    _check_npy_header(path, fh)


def read_numpy(path: str | Path, key: str | None = None) -> MedImage:
    """Read ``.npy`` (never with pickles) or one array of an ``.npz`` (``key``, else ``imgs``/``image``/the
    only array). Geometry in an ``.npz``: medfoundry's own ``spacing_array_order``/``origin``/``direction``
    (see :func:`medfoundry.io.write.write_image`), or MedSAM/FLARE's ``spacing`` stored as (x, y, z)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as fh:
                _check_npy_header(path, fh)
            return _from_array(np.load(path, allow_pickle=False), path, {"format": "npy"})
        _check_npz(path)
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if key is None:
                key = next((k for k in ("imgs", "image", "img", "arr_0") if k in names), None)
                if key is None and len(names) == 1:
                    key = names[0]
            if key is None or key not in names:
                raise ImageReadError(path, f"npz has arrays {names}; choose one with key=")
            arr = z[key]
            geometry = {k: z[k] for k in ("spacing_array_order", "spacing", "origin", "direction") if k in names}
    except ImageReadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError, KeyError, AttributeError,
            NotImplementedError, RuntimeError) as exc:
        raise ImageReadError(path, f"unreadable NumPy file ({type(exc).__name__}: {exc})") from exc
    img = _from_array(arr, path, {"format": "npz", "key": key})
    nsp = img.spatial_ndim
    if "spacing_array_order" in geometry:
        img.spacing = tuple(float(s) for s in geometry["spacing_array_order"])
        img.origin = tuple(float(o) for o in geometry["origin"])
        img.direction = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, nsp)
        img.meta["spacing_source"] = "npz geometry"
    elif "spacing" in geometry and len(geometry["spacing"]) == nsp:
        # MedSAM/FLARE npz files store spacing as (x, y, z) while the array is (z, y, x)
        img.spacing = tuple(float(s) for s in geometry["spacing"][::-1])
        img.meta["spacing_source"] = "npz spacing (stored x, y, z)"
    return img
