"""One entry point that reads any supported path into a :class:`MedImage`."""

from __future__ import annotations

import os
from pathlib import Path

from medfoundry.errors import ImageReadError
from medfoundry.io.image import MedImage

#: Files larger than this are refused before reading (bytes); override with MEDFOUNDRY_MAX_FILE_BYTES.
DEFAULT_MAX_FILE_BYTES = 4 * 2**30

NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".mnc", ".mgh", ".mgz", ".par")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def _max_bytes() -> int:
    value = os.environ.get("MEDFOUNDRY_MAX_FILE_BYTES")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_FILE_BYTES


def detect_format(path: Path) -> str:
    """``"dicom-series"``, ``"dicom"``, ``"nifti"``, ``"numpy"`` or ``"raster"`` from suffix and magic bytes."""
    if path.is_dir():
        return "dicom-series"
    name = path.name.lower()
    if name.endswith(NIBABEL_SUFFIXES):
        return "nifti"
    if name.endswith((".npy", ".npz")):
        return "numpy"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM" or name.endswith((".dcm", ".dicom", ".ima")):
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "raster"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"n+2\x00"):
        return "nifti"
    return "dicom"  # DICOM files without preamble have no magic; the DICOM reader says if it is not one


def read_image(path: str | Path, *, series_uid: str | None = None, key: str | None = None) -> MedImage:
    """Read a medical image from ``path`` into a :class:`MedImage`.

    Args:
        path: a DICOM file (single or multi-frame), a folder holding one DICOM series, a DICOMweb series
            address, a NIfTI file (or
            Analyze/MINC/MGH/PAR-REC through nibabel),
            a PNG/JPEG/BMP/TIFF file, or a NumPy ``.npy``/``.npz`` file.
        series_uid: for a folder with several DICOM series, which one to read.
        key: for an ``.npz`` with several arrays, which one to read.

    Raises:
        ImageReadError: the path does not exist, is empty, too large, corrupt, truncated, or cannot be decoded;
            the message names the file and the reason.

    A ``dicomweb+http(s)://…/studies/<UID>/series/<UID>`` address is retrieved over DICOMweb into a local cache
    and read like a series folder (:mod:`medfoundry.io.dicomweb`).
    """
    if isinstance(path, str) and path.startswith(("dicomweb+http://", "dicomweb+https://")):
        from medfoundry.io.dicomweb import read_dicomweb

        return read_dicomweb(path)
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file or folder")
    if path.is_file():
        size = path.stat().st_size
        if size == 0:
            raise ImageReadError(path, "empty file")
        if size > _max_bytes():
            raise ImageReadError(path, f"file is {size / 2**30:.1f} GiB, over the {_max_bytes() / 2**30:.1f} GiB "
                                       "limit (set MEDFOUNDRY_MAX_FILE_BYTES to raise it)")
    fmt = detect_format(path)
    if fmt == "dicom-series":
        from medfoundry.io.dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid)
    if fmt == "dicom":
        from medfoundry.io.dicom import read_dicom_file

        return read_dicom_file(path)
    if fmt == "nifti":
        from medfoundry.io.nifti import read_nifti

        return read_nifti(path)
    if fmt == "numpy":
        from medfoundry.io.raster import read_numpy

        return read_numpy(path, key=key)
    from medfoundry.io.raster import read_raster

    return read_raster(path)
