"""One entry point that reads any supported path into a :class:`MedImage`."""

from __future__ import annotations

from pathlib import Path

from medfoundry.errors import ImageReadError, InputContractError
from medfoundry.io.image import MedImage
from medfoundry.io.limits import DEFAULT_MAX_FILE_BYTES, max_file_bytes

__all__ = ["DEFAULT_MAX_FILE_BYTES", "detect_format", "read_image"]


NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".mnc", ".mgh", ".mgz", ".par")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def _max_bytes() -> int:
    return max_file_bytes()


def detect_format(path: Path) -> str:
    """``"dicom-series"``, ``"dicom"``, ``"nifti"``, ``"numpy"``, ``"zip"`` or ``"raster"`` from suffix and magic
    bytes."""
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
    if name.endswith(".zip") or head[:4] == b"PK\x03\x04":
        return "zip"
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
        path: a DICOM file (single or multi-frame), a folder holding one DICOM series, a NIfTI file (or
            Analyze/MINC/MGH/PAR-REC through nibabel),
            a PNG/JPEG/BMP/TIFF file, a NumPy ``.npy``/``.npz`` file, or a ``.zip`` of a DICOM series or of one
            such file (see :mod:`medfoundry.io.archive`). Declared sizes are checked against the limits of
            :mod:`medfoundry.io.limits` before anything is decoded or decompressed.
        series_uid: for a folder (or zip) with several DICOM series, which one to read.
        key: for an ``.npz`` with several arrays, which one to read.

    Raises:
        ImageReadError: the path does not exist, is empty, too large, corrupt, truncated, or cannot be decoded;
            the message names the file and the reason.
    """
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
    try:
        return _read(path, series_uid, key)
    except InputContractError as exc:  # e.g. a header's geometry no MedImage can hold
        raise ImageReadError(path, str(exc)) from exc
    except OSError as exc:  # permission denied, a file that vanished while being read ...
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def _read(path: Path, series_uid: str | None, key: str | None) -> MedImage:
    fmt = detect_format(path)
    if fmt == "dicom-series":
        from medfoundry.io.dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid)
    if fmt == "zip":
        from medfoundry.io.archive import read_zip

        return read_zip(path, series_uid=series_uid)
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
