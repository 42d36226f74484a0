"""Mask outputs of the web app: PNG, run-length encoding (COCO's uncompressed RLE), NIfTI and DICOM SEG files,
and the end points of the long and short axes drawn on the image."""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medfoundry.errors import ImageWriteError, InputContractError
from medfoundry.io.image import MedImage


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of a (H, W) uint8/bool or (H, W, 3|4) uint8 array; bool masks become 0/255."""
    arr = np.asarray(pixels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def b64_png(pixels: np.ndarray) -> str:
    """:func:`png_bytes` as base64 text (for JSON)."""
    return base64.b64encode(png_bytes(pixels)).decode("ascii")


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a 2D mask: ``{"size": [H, W], "counts": [...]}``, run lengths over the
    pixels in column-major (Fortran) order, starting with the number of zeros (pycocotools' ``frPyObjects``
    reads it)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputContractError(f"RLE takes a 2D mask, got shape {m.shape}")
    flat = m.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The (H, W) bool mask of :func:`rle_encode`'s output."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise InputContractError("RLE counts do not add up to the mask's size")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def mask_volume(image: MedImage, mask: np.ndarray, slice_index: int | None) -> np.ndarray:
    """The mask on ``image``'s whole grid: a 2D mask of axial slice ``slice_index`` of a volume is placed in
    an otherwise empty (Z, Y, X) volume; other masks are returned as they are."""
    if image.is_volume and mask.ndim == 2:
        full = np.zeros(image.spatial_shape, dtype=bool)
        full[slice_index] = mask
        return full
    return np.asarray(mask, dtype=bool)


def nifti_bytes(image: MedImage, mask: np.ndarray) -> bytes:
    """A gzipped NIfTI of ``mask`` (uint8 0/1) on ``image``'s grid and geometry (2D masks as one slice)."""
    from medfoundry.io.nifti import to_nifti

    grid = MedImage(array=np.asarray(mask, dtype=np.uint8), spacing=image.spacing, origin=image.origin,
                    direction=image.direction, modality="SEG", units="raw", meta=dict(image.meta))
    img = to_nifti(grid)
    img.set_data_dtype(np.uint8)
    return gzip_bytes(img.to_bytes())


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped (deterministic: no time stamp)."""
    import gzip

    return gzip.compress(data, mtime=0)


def dicom_seg_bytes(upload: Path, suffix: str, mask: np.ndarray, max_expanded: int) -> bytes:
    """A DICOM SEG of ``mask`` ((Z, Y, X), or (Y, X) for one image) referencing the uploaded DICOM file or
    zipped series ``upload``; ImageWriteError for any other upload."""
    from medfoundry.io.dicom_seg import write_dicom_seg

    if suffix not in (".dcm", ".zip"):
        raise ImageWriteError("DICOM SEG needs a DICOM upload (a .dcm file or a zipped series)")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        mask = mask[None]
    with tempfile.TemporaryDirectory(prefix="medfoundry-seg-") as tmp:
        series = Path(tmp, "series")
        series.mkdir()
        if suffix == ".dcm":
            shutil.copyfile(upload, series / "0.dcm")
        else:
            _extract(upload, series, max_expanded)
        out = Path(tmp, "seg.dcm")
        write_dicom_seg(mask, series, out)
        return out.read_bytes()


def _extract(upload: Path, folder: Path, budget: int) -> None:
    """Extract the file members of a zip (already read once, so already checked) under numbered names."""
    with zipfile.ZipFile(upload) as z:
        for k, info in enumerate(i for i in z.infolist() if not i.is_dir()):
            with z.open(info) as src, open(folder / f"{k:05d}.dcm", "wb") as dst:
                while chunk := src.read(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:
                        raise ImageWriteError("zip expands past the limit")
                    dst.write(chunk)
