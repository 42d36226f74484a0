"""DICOM SEG output (highdicom) for masks of a DICOM series, referencing the source images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfoundry.errors import ImageWriteError
from medfoundry.files import atomic_output


def write_dicom_seg(mask: np.ndarray, series_folder: str | Path, out: str | Path, *, label: str = "object",
                    series_uid: str | None = None, overwrite: bool = False) -> Path:
    """Write a binary DICOM Segmentation of ``mask`` ((Z, Y, X) in the order medfoundry reads the series,
    i.e. sorted along the slice normal) that references every source image of the series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medfoundry.io.dicom import list_series, read_dataset

    groups = list_series(series_folder)
    files = groups.get(series_uid) if series_uid else (next(iter(groups.values())) if len(groups) == 1 else None)
    if not files:
        raise ImageWriteError(f"{series_folder}: need exactly one series (or series_uid) to reference")
    datasets = [read_dataset(Path(f)) for f in files]
    for ds in datasets:  # some anonymisers blank SOPClassUID; the file meta still names it
        if not ds.get("SOPClassUID") and getattr(ds, "file_meta", None) is not None:
            ds.SOPClassUID = ds.file_meta.get("MediaStorageSOPClassUID", "")
    try:
        iop = [float(x) for x in datasets[0].ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        datasets.sort(key=lambda ds: float(np.dot([float(x) for x in ds.ImagePositionPatient], normal)))
        shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    except Exception as exc:  # missing or malformed geometry tags in a source file
        raise ImageWriteError(f"{series_folder}: cannot order the series to reference "
                              f"({type(exc).__name__}: {exc})") from exc
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ImageWriteError(f"mask {mask.shape} does not match the series {shape}")
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.cid7150.Tissue, segmented_property_type=codes.cid7166.SoftTissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medfoundry", version="0.1", family=codes.cid7162.ArtificialIntelligence),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=9001,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medfoundry",
            manufacturer_model_name="medfoundry", software_versions="0.1", device_serial_number="0",
            omit_empty_frames=True,
        )
    except Exception as exc:  # highdicom refuses inconsistent or malformed source images
        raise ImageWriteError(f"{series_folder}: cannot build a DICOM SEG on this series "
                              f"({type(exc).__name__}: {exc})") from exc
    with atomic_output(out, overwrite) as tmp:
        seg.save_as(tmp)
    return Path(out)
