"""DICOM readers: single files, multi-frame files and series folders, through pydicom.

Pixel data are decoded by pydicom's own pixel plugins (install ``medfoundry[codecs]`` for JPEG, JPEG-LS,
JPEG 2000 and RLE), then the modality LUT (rescale slope/intercept) is applied with
:func:`pydicom.pixels.apply_modality_lut`, so CT values are Hounsfield units. MONOCHROME1 images are inverted
to MONOCHROME2 and palette-colour images expanded to RGB. Every failure raises :class:`ImageReadError`.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import ImageReadError, MedfoundryError
from medfoundry.io.image import MedImage
from medfoundry.io.limits import check_declared, raw_deflate_size
from medfoundry.io.window import Window

#: Tags that identify a person, an institution or a date; kept in ``MedImage.phi`` and out of ``meta``.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientAddress", "PatientTelephoneNumbers", "PatientWeight", "PatientSize", "IssuerOfPatientID",
    "AccessionNumber", "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime",
    "SeriesTime", "AcquisitionTime", "ContentTime", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "StationName", "DeviceSerialNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID",
)
_META_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "ViewPosition",
    "SeriesDescription", "StudyDescription", "SliceThickness", "KVP", "ConvolutionKernel",
    "RescaleSlope", "RescaleIntercept", "BitsStored", "PixelRepresentation",
)


def _pydicom():
    import pydicom

    return pydicom


def read_dataset(path: Path, stop_before_pixels: bool = False) -> Any:
    """Read a DICOM dataset, recovering files without a preamble or file meta where that is safe.

    A deflated data set is inflated once in bounded chunks (nothing kept) and refused past
    :func:`~medfoundry.io.limits.max_expanded_bytes` before pydicom inflates it."""
    pydicom = _pydicom()
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    _check_deflated(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            except pydicom.errors.InvalidDicomError:
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
                if len(ds) == 0:
                    raise ImageReadError(path, "not a DICOM file (no preamble, no readable elements)") from None
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed or truncated files
        raise ImageReadError(path, f"malformed or truncated DICOM ({type(exc).__name__}: {exc})") from exc
    return ds


def _check_deflated(path: Path) -> None:
    """Refuse a Deflated Explicit VR Little Endian file whose data set inflates past the configured limit."""
    pydicom = _pydicom()
    with open(path, "rb") as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.filereader.read_preamble(fh, force=True)
                meta = pydicom.filereader._read_file_meta_info(fh)
        except Exception:  # not a Part 10 file, or a broken file meta: pydicom itself will say so
            return
        try:
            deflated = meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian
        except Exception:
            return
        if deflated:
            raw_deflate_size(path, fh.read())


def _guard(path: Path, what: str, func: Any, *args: Any) -> Any:
    """Call ``func(*args)`` and turn anything pydicom or a codec raises on a malformed file (unknown value
    representations, unparsable numbers, wrong value multiplicity, codec panics) into :class:`ImageReadError`."""
    try:
        return func(*args)
    except MedfoundryError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 codec panics derive from BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        detail = str(exc).strip().replace("\n", " ")[:300]
        raise ImageReadError(path, f"{what} ({type(exc).__name__}: {detail})") from exc


def _has_pixels(ds: Any) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _recover_transfer_syntax(ds: Any, path: Path) -> None:
    """Give a dataset read without file meta the transfer syntax it was actually encoded with.

    Only uncompressed (native) pixel data can be recovered: the encoding pydicom used to parse the file is the
    transfer syntax. Encapsulated (compressed) pixel data without a transfer syntax cannot be decoded.
    """
    pydicom = _pydicom()
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    pixel = ds["PixelData"].value if "PixelData" in ds else None
    if isinstance(pixel, bytes) and pixel[:4] == b"\xfe\xff\x00\xe0":
        raise ImageReadError(path, "file meta has no Transfer Syntax UID and the pixel data are compressed")
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    uid = pydicom.uid
    tsyntax = (
        uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    )
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax


def _decode(ds: Any, path: Path) -> np.ndarray:
    """Decode pixel data to the stored values (colour converted to RGB), or raise ImageReadError."""
    if not _has_pixels(ds):
        sop = getattr(ds, "SOPClassUID", None)
        kind = getattr(sop, "name", str(sop)) if sop is not None else "unknown SOP class"
        raise ImageReadError(path, f"no pixel data in this DICOM object ({kind})")
    _recover_transfer_syntax(ds, path)
    tsyntax = ds.file_meta.TransferSyntaxUID
    _check_pixel_size(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 codec panics derive from BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        reason = str(exc).strip().replace("\n", " ")
        if "less than expected" in reason:
            reason = "pixel data truncated: " + reason
        if "plugin" in reason.lower() or "no pixel data handlers" in reason.lower():
            reason += " (install medfoundry[codecs] for the JPEG/JPEG-LS/JPEG 2000/RLE decoders)"
        raise ImageReadError(path, f"cannot decode pixel data ({tsyntax.name}): {reason}") from exc
    return arr


def _check_pixel_size(ds: Any, path: Path) -> None:
    """Refuse pixel data whose declared size (rows × columns × frames × samples × bytes) passes the limit."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 16)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ImageReadError(path, f"unreadable image dimensions ({type(exc).__name__}: {exc})") from exc
    if min(rows, cols, frames, samples, bits) <= 0:
        raise ImageReadError(path, f"invalid image dimensions: {rows} rows, {cols} columns, {frames} frames, "
                                   f"{samples} samples, {bits} bits allocated")
    # decoders and the colour conversion work in at least 8 bits per sample
    check_declared(path, (frames, rows, cols, samples), max(bits, 8) / 8, "DICOM pixel data")


def _to_values(ds: Any, arr: np.ndarray) -> tuple[np.ndarray, str]:
    """Apply palette or modality LUT and MONOCHROME1 inversion. Returns (values, photometric)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return apply_color_lut(arr, ds), "RGB"
    if ds.get("SamplesPerPixel", 1) > 1:
        # pydicom converts YBR_* to RGB by default when decoding
        return arr, "RGB" if photometric.startswith("YBR") else photometric
    values = apply_modality_lut(arr, ds)
    values = _compact(values)
    if photometric == "MONOCHROME1":
        lo, hi = _stored_range(ds, values)
        values = _compact(np.asarray(lo + hi - values.astype(np.float64) if values.dtype.kind == "f" else
                                     (lo + hi) - values.astype(np.int64)))
        photometric = "MONOCHROME2"
    return values, photometric


def _stored_range(ds: Any, values: np.ndarray) -> tuple[float, float]:
    """The value range the stored bits can represent, after the modality rescale."""
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    if "ModalityLUTSequence" in ds:
        lo, hi = float(values.min()), float(values.max())
    return lo, hi


def _compact(values: np.ndarray) -> np.ndarray:
    """Store integral values in the smallest signed/unsigned integer type that holds them; else float32."""
    if values.dtype.kind in "iu":
        return values
    if values.size and np.all(np.isfinite(values)) and np.array_equal(values, np.round(values)):
        lo, hi = float(values.min()), float(values.max())
        for dtype in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return values.astype(dtype)
    return values.astype(np.float32)


def _window(ds: Any) -> Window | None:
    """The first window centre/width of the file, or a linear window spanning its VOI LUT's input range."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
        if w > 0:
            return Window(c, w, "file")
    if "VOILUTSequence" in ds:
        desc = ds.VOILUTSequence[0].LUTDescriptor
        n, first = int(desc[0]) or 65536, float(desc[1])
        return Window(first + n / 2.0, float(n), "file VOI LUT")
    return None


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _phi_and_meta(ds: Any) -> tuple[dict[str, str], dict[str, Any]]:
    phi = {k: str(ds.get(k)) for k in PHI_KEYWORDS if k in ds and ds.get(k) not in (None, "")}
    meta: dict[str, Any] = {}
    for k in _META_KEYWORDS:
        if k in ds and ds.get(k) not in (None, ""):
            v = ds.get(k)
            if isinstance(v, int):
                meta[k] = int(v)
            elif isinstance(v, float):
                meta[k] = float(v)
            else:
                meta[k] = getattr(v, "name", None) or str(v)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        meta["TransferSyntax"] = tsyntax.name
    return phi, meta


def _plane(ds: Any) -> tuple[np.ndarray | None, np.ndarray | None, tuple[float, float] | None]:
    """(direction along a row = X axis, direction down a column = Y axis, (row spacing, column spacing)) from
    the top level or the shared functional groups of an enhanced multi-frame object (DICOM C.7.6.2.1.1)."""
    iop = ds.get("ImageOrientationPatient")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        group = shared[0]
        if iop is None and "PlaneOrientationSequence" in group:
            iop = group.PlaneOrientationSequence[0].get("ImageOrientationPatient")
        if spacing is None and "PixelMeasuresSequence" in group:
            spacing = group.PixelMeasuresSequence[0].get("PixelSpacing")
    rows = cols = None
    if iop is not None and len(iop) == 6:
        v = np.asarray([float(x) for x in iop])
        rows, cols = v[:3], v[3:]
        if np.linalg.norm(rows) < 1e-6 or np.linalg.norm(cols) < 1e-6:
            rows = cols = None
        else:
            rows, cols = rows / np.linalg.norm(rows), cols / np.linalg.norm(cols)
    pixel = (float(spacing[0]), float(spacing[1])) if spacing is not None and len(spacing) == 2 else None
    if pixel is not None and min(pixel) <= 0:
        pixel = None
    return rows, cols, pixel


def _frame_positions(ds: Any, nframes: int) -> np.ndarray | None:
    """Per-frame LPS positions of a multi-frame object, from its per-frame groups or RT dose offsets."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == nframes:
        positions = []
        for item in per_frame:
            seq = item.get("PlanePositionSequence")
            if not seq or "ImagePositionPatient" not in seq[0]:
                return None
            positions.append([float(x) for x in seq[0].ImagePositionPatient])
        return np.asarray(positions)
    offsets = ds.get("GridFrameOffsetVector")
    ipp = ds.get("ImagePositionPatient")
    if offsets is not None and ipp is not None and len(offsets) == nframes:
        return np.asarray([float(o) for o in offsets])[:, None]  # offsets along the normal, see caller
    return None


def dataset_to_image(ds: Any, path: Path) -> MedImage:
    """Turn one decoded pydicom dataset (single- or multi-frame) into a :class:`MedImage`; anything malformed
    raises :class:`ImageReadError` naming ``path``."""
    return _guard(path, "malformed DICOM", _dataset_to_image, ds, path)


def _dataset_to_image(ds: Any, path: Path) -> MedImage:
    arr = _decode(ds, path)
    values, photometric = _to_values(ds, arr)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    color = photometric not in ("MONOCHROME1", "MONOCHROME2")
    spatial_ndim = values.ndim - (1 if color else 0)
    rows, cols, pixel = _plane(ds)
    phi, meta = _phi_and_meta(ds)
    meta["spacing_source"] = "header" if pixel else "default (1 mm; no PixelSpacing in file)"
    dy, dx = pixel or (1.0, 1.0)
    rows = rows if rows is not None else np.array([1.0, 0.0, 0.0])
    cols = cols if cols is not None else np.array([0.0, 1.0, 0.0])
    normal = np.cross(rows, cols)
    ipp = ds.get("ImagePositionPatient")
    origin = np.asarray([float(x) for x in ipp]) if ipp is not None and len(ipp) == 3 else np.zeros(3)
    if spatial_ndim == 2:
        spacing: tuple[float, ...] = (dy, dx)
        direction = np.column_stack([cols, rows])
    else:
        meta["frames"] = nframes
        dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        positions = _frame_positions(ds, values.shape[0])
        if positions is not None and positions.shape[1] == 1:  # RT dose grid offsets along the normal
            offsets = positions[:, 0]
            positions = origin[None, :] + offsets[:, None] * normal[None, :]
        if positions is not None and len(positions) > 1:
            steps = np.diff(positions @ normal)
            if np.all(np.abs(steps) > 1e-6):
                dz = float(np.median(np.abs(steps)))
                normal = normal if np.median(steps) > 0 else -normal
            origin = positions[0]
        spacing = (dz if dz > 0 else 1.0, dy, dx)
        direction = np.column_stack([normal, cols, rows])
    modality = str(ds.get("Modality", "OT") or "OT")
    return MedImage(
        array=values,
        spacing=spacing,
        origin=tuple(origin),
        direction=direction,
        modality=modality,
        photometric=photometric,
        units="HU" if modality == "CT" and not color else "raw",
        window=None if color else _window(ds),
        phi=phi,
        meta=meta,
        source=str(path),
    )


def read_dicom_file(path: str | Path) -> MedImage:
    """Read one DICOM file (single- or multi-frame). Multi-frame images become ``(F, Y, X[, 3])``."""
    path = Path(path)
    return dataset_to_image(read_dataset(path), path)


def list_series(folder: str | Path) -> dict[str, list[Path]]:
    """Group the DICOM files with pixel data under ``folder`` (recursively) by SeriesInstanceUID."""
    folder = Path(folder)
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.upper() == "DICOMDIR" or p.stat().st_size == 0:
            continue
        try:
            ds = read_dataset(p, stop_before_pixels=True)
        except ImageReadError:
            continue
        try:
            uid = _guard(p, "malformed DICOM", _series_uid, ds)
        except ImageReadError:
            continue
        if uid is not None:
            groups[uid].append(p)
    return dict(groups)


def _series_uid(ds: Any) -> str | None:
    """The SeriesInstanceUID of an image object (one with Rows and Columns), else None."""
    if "SeriesInstanceUID" not in ds or not ("Rows" in ds and "Columns" in ds):
        return None
    return str(ds.SeriesInstanceUID)


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> MedImage:
    """Read the one DICOM series in ``folder`` (or the one named ``series_uid``) as a ``(Z, Y, X)`` volume.

    Slices are sorted by their position along the slice normal; slice spacing is the median distance between
    neighbouring positions (``meta["slice_spacing_uniform"]`` says whether all gaps agree within 1 %, and
    ``meta["slice_step_range_mm"]`` gives the smallest and largest gap). A series with a missing slice is read
    (for viewing); consumers that need real 3D geometry refuse it
    (:func:`medfoundry.predict.volume_encoder.to_ras`).
    """
    folder = Path(folder)
    groups = list_series(folder)
    if not groups:
        raise ImageReadError(folder, "no DICOM image files in this folder")
    if series_uid is None and len(groups) > 1:
        listing = "; ".join(f"{uid} ({len(files)} files)" for uid, files in groups.items())
        raise ImageReadError(folder, f"folder holds {len(groups)} series, pick one with series_uid: {listing}")
    if series_uid is not None and series_uid not in groups:
        raise ImageReadError(folder, f"no series {series_uid} in this folder")
    files = groups[series_uid or next(iter(groups))]
    datasets = [read_dataset(p) for p in files]
    if len(datasets) == 1:
        return dataset_to_image(datasets[0], files[0])
    declared = sum(_guard(p, "malformed DICOM", _declared_bytes, ds) for p, ds in zip(files, datasets, strict=True))
    check_declared(folder, (declared,), 1, f"series of {len(files)} files")
    return _guard(folder, "malformed DICOM series", _stack_series, folder, files, datasets)


def _declared_bytes(ds: Any) -> int:
    return (int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * int(ds.get("NumberOfFrames") or 1)
            * int(ds.get("SamplesPerPixel") or 1) * max(int(ds.get("BitsAllocated") or 16), 8) // 8)


def _stack_series(folder: Path, files: list[Path], datasets: list[Any]) -> MedImage:
    rows, cols, _ = _plane(datasets[0])
    if rows is None or cols is None:
        raise ImageReadError(folder, "series has no ImageOrientationPatient; cannot order its slices")
    normal = np.cross(rows, cols)
    try:
        positions = np.asarray([[float(x) for x in ds.ImagePositionPatient] for ds in datasets])
    except AttributeError as exc:
        raise ImageReadError(folder, "a slice lacks ImagePositionPatient; cannot order the series") from exc
    order = np.argsort(positions @ normal, kind="stable")
    slices = [dataset_to_image(datasets[i], files[i]) for i in order]
    shapes = {s.array.shape for s in slices}
    if len(shapes) != 1:
        raise ImageReadError(folder, f"slices of the series differ in shape: {sorted(shapes)}")
    along = (positions @ normal)[order]
    gaps = np.diff(along)
    if np.any(np.abs(gaps) < 1e-6):
        raise ImageReadError(folder, "two slices share one position (duplicate or multi-phase series)")
    dz = float(np.median(gaps))
    first = slices[0]
    assert first.direction is not None  # dataset_to_image always sets the in-plane directions
    dtypes = {s.array.dtype for s in slices}
    stack = np.stack([s.array for s in slices]).astype(np.result_type(*dtypes))
    meta = {**first.meta, "slices": len(slices), "slice_spacing_uniform": bool(np.allclose(gaps, dz, rtol=0.01)),
            "slice_step_range_mm": [round(float(gaps.min()), 4), round(float(gaps.max()), 4)]}
    return MedImage(
        array=stack,
        spacing=(dz, *first.spacing),
        origin=tuple(positions[order[0]]),
        direction=np.column_stack([normal, first.direction]),
        modality=first.modality,
        photometric=first.photometric,
        units=first.units,
        window=first.window,
        phi=first.phi,
        meta=meta,
        source=str(folder),
    )
