"""DICOM Structured Report of a segmented finding's measurements: a TID 1500 Measurement Report (highdicom).

One volumetric ROI group (TID 1411) whose region is a segment of a DICOM SEG, with the finding's volume (mL),
RECIST long and short axis (mm, on the axial slice where the long axis is longest) and, for CT, its mean
attenuation (HU). :func:`measurement_report` builds the dataset (for files or STOW-RS), :func:`read_measurement_report`
reads the numbers back. Measurements come as a mapping with the keys of ``tasks.measure.Measurement``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfoundry.errors import ImageReadError, ImageWriteError
from medfoundry.files import atomic_output

#: SR concept → key of the measurement mapping; the order of the report.
MEASURED = ("volume_ml", "long_axis_mm", "short_axis_mm", "mean")


def _concepts() -> dict[str, tuple[Any, Any, Any]]:
    """key → (concept name, unit, derivation) of each measurement."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    millilitre = Code("ml", "UCUM", "milliliter")
    return {
        "volume_ml": (codes.SCT.Volume, millilitre, None),
        "long_axis_mm": (codes.SCT.LongAxis, codes.UCUM.Millimeter, None),
        "short_axis_mm": (codes.SCT.ShortAxis, codes.UCUM.Millimeter, None),
        "mean": (codes.DCM.AttenuationCoefficient, codes.UCUM.HounsfieldUnit, codes.SCT.Mean),
    }


def measurement_report(segmentation: Any, source_images: Sequence[Any], measurement: Mapping[str, Any], *,
                       segment_number: int = 1, finding: str = "lesion 1", series_number: int = 9002) -> Any:
    """A TID 1500 Comprehensive 3D SR (a pydicom Dataset) of one segmented finding.

    Args:
        segmentation: the DICOM SEG dataset whose segment ``segment_number`` is the measured region.
        source_images: the datasets the SEG was made from (the report's evidence, same study).
        measurement: ``volume_ml`` (mL), ``long_axis_mm``, ``short_axis_mm`` (mm), ``mean`` and ``units``
            (the mean is reported as attenuation in HU only when ``units == "HU"``); None values are left out.
        finding: the tracking identifier of the finding.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    try:
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name="medfoundry", manufacturer_name="medfoundry"))
        # not ReferencedSegment.from_segmentation: it expects the segment identification per frame, and highdicom
        # writes it once in the shared functional groups for a single-segment SEG
        region = hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=segment_number, source_series=hd.sr.SourceSeriesForSegmentation(
                segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID))
        items = []
        for key, (name, unit, derivation) in _concepts().items():
            value = measurement.get(key)
            if value is None or (key == "mean" and measurement.get("units") != "HU"):
                continue
            items.append(hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation))
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=finding),
            referenced_segment=region, finding_type=codes.SCT.Lesion, measurements=items)
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.LN.CTUnspecifiedBodyRegion if measurement.get("units") == "HU"
            else Code("18748-4", "LN", "Diagnostic imaging study"), imaging_measurements=[group])
        return hd.sr.Comprehensive3DSR(
            evidence=[*source_images, segmentation], content=report[0], series_instance_uid=hd.UID(),
            series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medfoundry",
            is_complete=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageWriteError(f"cannot build the measurement report: {exc}") from exc


def write_measurement_report(segmentation: Any, source_images: Sequence[Any], measurement: Mapping[str, Any],
                             out: str | Path, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Write :func:`measurement_report` to ``out`` atomically; returns the path."""
    sr = measurement_report(segmentation, source_images, measurement, **kwargs)
    with atomic_output(out, overwrite) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return Path(out)


def read_measurement_report(dataset: Any) -> list[dict[str, Any]]:
    """The findings of a TID 1500 report: per volumetric group, ``finding`` (tracking identifier),
    ``segment`` ((SEG SOP Instance UID, segment number)) and the measurement keys of :data:`MEASURED` found."""
    import highdicom as hd

    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
        content: Any = sr.content  # a MeasurementReport for TID 1500 documents
        groups = content.get_volumetric_roi_measurement_groups()
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ImageReadError(getattr(dataset, "filename", "<dataset>") or "<dataset>",
                             f"not a TID 1500 measurement report ({exc})") from exc
    names = {(c[0].value, c[0].scheme_designator): key for key, c in _concepts().items()}
    out = []
    for group in groups:
        seg = group.referenced_segment
        row: dict[str, Any] = {"finding": group.tracking_identifier,
                               "segment": (seg.referenced_sop_instance_uid, int(seg.referenced_segment_numbers[0]))
                               if seg is not None else None}
        for m in group.get_measurements():
            key = names.get((m.name.value, m.name.scheme_designator))
            if key:
                row[key] = float(m.value)
        out.append(row)
    return out
