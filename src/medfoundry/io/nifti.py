"""NIfTI (and other nibabel formats: Analyze, MINC, MGH, PAR/REC) reader and NIfTI writer through nibabel.

nibabel gives the array in index order ``(i, j, k)`` and an affine to RAS+ mm. medfoundry stores volumes as
``(Z, Y, X)`` = ``(k, j, i)`` in LPS, so the array is transposed and the affine's columns reversed and its
first two rows negated. :func:`write_nifti` undoes exactly this, so a read–write round trip keeps geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfoundry.errors import ImageReadError
from medfoundry.io.image import MedImage
from medfoundry.io.limits import check_declared

_FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS


def read_nifti(path: str | Path) -> MedImage:
    """Read a NIfTI-1/2 file (``.nii``/``.nii.gz``) or another nibabel spatial image (Analyze ``.hdr``/``.img``,
    MINC ``.mnc``, MGH ``.mgz``, PAR/REC). 4D series are refused unless the 4th axis has length 1: a time
    series is not one MedImage."""
    import nibabel as nib

    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise ImageReadError(path, f"not a spatial image ({type(img).__name__})")
        # the header's declared shape bounds what is read and decompressed (.nii.gz): check it first
        check_declared(path, img.shape, np.dtype(img.get_data_dtype()).itemsize, "volume")
        data = np.asanyarray(img.dataobj)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ImageReadError(path, f"{data.ndim}D NIfTI with shape {data.shape}; only 2D/3D images are supported")
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    lin = _FLIP @ affine[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if np.any(norms <= 0):
        raise ImageReadError(path, "NIfTI affine is singular")
    direction = lin / norms
    spacing = np.where(zooms > 0, zooms, norms)
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    units = "raw"
    if data.dtype.kind == "f" and data.dtype.itemsize > 4:
        data = data.astype(np.float32)
    meta: dict = {"format": type(img).__name__}
    if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        meta["qform_code"] = int(img.header["qform_code"])
        meta["sform_code"] = int(img.header["sform_code"])
    return MedImage(
        array=array,
        spacing=tuple(spacing[::-1]),
        origin=tuple(_FLIP @ affine[:3, 3]),
        direction=direction[:, ::-1],
        modality="OT",
        units=units,
        meta=meta,
        source=str(path),
    )


def to_nifti(image: MedImage):
    """Build a ``nibabel.Nifti1Image`` with the image's geometry (inverse of :func:`read_nifti`)."""
    import nibabel as nib

    if image.is_color:
        raise ImageReadError(image.source or "<image>", "NIfTI output of colour images is not supported")
    arr = image.array
    if image.spatial_ndim == 2:
        arr = arr[None]
    data = np.transpose(arr, (2, 1, 0))
    affine = image.affine
    ras = np.eye(4)
    ras[:3, :3] = _FLIP @ affine[:3, :3][:, ::-1]
    ras[:3, 3] = _FLIP @ affine[:3, 3]
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    return img
