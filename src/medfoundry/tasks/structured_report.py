"""Structured reports from a segmentation (RadGPT-style): measurements as JSON, a narrative rendered from that JSON
only, and for DICOM input a DICOM SR measurement report (TID 1500, highdicom) referencing the images and the SEG.

JSON (``schema: medfoundry-structured-report/1``): the source image and modality, the model and the prompt, the
region when known, ``lesion_count`` (3D/2D connected components of the mask, 26-/8-connected) and per lesion,
largest first: long and short axis (RECIST-style, on the slice where the long axis is longest), area (2D) or
volume (3D), slice range and key slice (3D), mean / min / max intensity (HU for CT; omitted for colour images).
Sizes are in mm, mm² and mL when the image carries its pixel spacing; otherwise in pixels, px² and voxels, with
``size_units: "px"`` — never "mm". A mask without voxels gives ``lesion_count: 0`` and ``measurable: false``.

:func:`narrative` writes its paragraph from the JSON alone: every number in the text is a value of the JSON (a test
checks it), formatted as ``str(value)`` of the already-rounded JSON numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import ImageWriteError, InputContractError
from medfoundry.io.image import MedImage
from medfoundry.tasks.measure import diameters

SCHEMA = "medfoundry-structured-report/1"


def _components(mask: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    comps = [labels == i for i in range(1, n + 1)]
    return sorted(comps, key=lambda c: -int(c.sum()))


def _lesion(comp: np.ndarray, image: MedImage, known: bool, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "voxels" if comp.ndim == 3 else "pixels": int(comp.sum())}
    if image.is_volume:
        dz, dy, dx = image.spacing if known else (1.0, 1.0, 1.0)
        best, key = (0.0, 0.0), None
        zs = np.nonzero(comp.any(axis=(1, 2)))[0]
        for z in zs:
            d = diameters(comp[z], (dy, dx))
            if d[0] > best[0]:
                best, key = d, int(z)
        out.update({"long_axis": round(best[0], 1), "short_axis": round(best[1], 1), "key_slice": key,
                    "slice_range": [int(zs.min()), int(zs.max())]})
        if known:
            out["volume_ml"] = round(float(comp.sum()) * dz * dy * dx / 1000.0, 2)
    else:
        dy, dx = image.spacing if known else (1.0, 1.0)
        long_axis, short_axis = diameters(comp, (dy, dx))
        out.update({"long_axis": round(long_axis, 1), "short_axis": round(short_axis, 1)})
        if known:
            out["area_mm2"] = round(float(comp.sum()) * dy * dx, 1)
    if not image.is_color:
        values = np.asarray(image.array)[comp]
        out["intensity"] = {"mean": round(float(values.mean()), 1), "min": round(float(values.min()), 1),
                            "max": round(float(values.max()), 1), "units": image.units or "value"}
    return out


def structured_report(mask: np.ndarray, image: MedImage, *, model: str, prompt: dict[str, Any] | None = None,
                      region: str | None = None, finding: str = "lesion", min_fraction: float = 0.05,
                      min_voxels: int = 10) -> dict[str, Any]:
    """The structured report (a JSON-ready dict) of ``mask`` ((Z, Y, X) or (Y, X), non-zero = inside, on
    ``image``'s grid). ``prompt``: what the segmenter was given (box XYXY in pixels, slice, propagate);
    ``region``: the organ/region when the caller knows it (None → reported as not known).

    Connected components smaller than ``min_voxels`` or ``min_fraction`` of the largest are not counted as
    lesions (segmenters leave specks at a mask's edge); their number and voxels are reported as
    ``small_fragments``."""
    mask = np.asarray(mask).astype(bool)
    if mask.shape != image.spatial_shape:
        raise InputContractError(f"mask shape {mask.shape} differs from the image's {image.spatial_shape}")
    known = not str(image.meta.get("spacing_source", "header")).startswith("default")
    report: dict[str, Any] = {
        "schema": SCHEMA, "source": str(image.source or ""), "modality": image.modality or "unknown",
        "dimensions": 3 if image.is_volume else 2, "model": model, "prompt": prompt or {}, "region": region,
        "finding": finding, "spacing_known": known, "size_units": "mm" if known else "px",
    }
    comps = _components(mask) if mask.any() else []
    if comps:
        floor = max(min_voxels, min_fraction * int(comps[0].sum()))
        small = [c for c in comps[1:] if int(c.sum()) < floor]
        comps = [comps[0]] + [c for c in comps[1:] if int(c.sum()) >= floor]
        report["small_fragments"] = {"count": len(small), "voxels": int(sum(int(c.sum()) for c in small))}
    report["lesion_count"] = len(comps)
    report["measurable"] = bool(comps)
    report["lesions"] = [_lesion(c, image, known, i + 1) for i, c in enumerate(comps)]
    if not comps:
        report["note"] = "the mask has no voxels: nothing to measure"
    return report


def narrative(report: dict[str, Any]) -> str:
    """A paragraph written from ``report`` alone (every number in it is a value of the JSON)."""
    f = report["finding"]
    where = f" in the {report['region']}" if report.get("region") else ""
    prompt = report.get("prompt") or {}
    how = f"segmented by {report['model']}"
    if "box_xyxy" in prompt:
        how += " from a box prompt"
        if prompt.get("slice") is not None:
            how += f" on slice {prompt['slice']}"
    if prompt.get("propagate"):
        how += ", propagated through the volume"
    if not report["measurable"]:
        return (f"No {f} was found{where}: the mask {how} is empty, so no size or intensity is reported "
                "(not measurable).")
    n = report["lesion_count"]
    text = [f"{n} {f}{'' if n == 1 else 's'}{where} {'was' if n == 1 else 'were'} {how}."]
    unit = "mm" if report["spacing_known"] else "pixels"
    for les in report["lesions"]:
        parts = [f"long axis {les['long_axis']} {unit}", f"short axis {les['short_axis']} {unit}"]
        if "volume_ml" in les:
            parts.append(f"volume {les['volume_ml']} mL")
        elif "area_mm2" in les:
            parts.append(f"area {les['area_mm2']} mm²")
        else:
            parts.append(f"{les.get('voxels', les.get('pixels'))} {'voxels' if 'voxels' in les else 'pixels'}")
        if "slice_range" in les:
            lo, hi = les["slice_range"]
            parts.append(f"slices {lo} to {hi} (longest on slice {les['key_slice']})")
        if "intensity" in les:
            i = les["intensity"]
            u = " HU" if i["units"] == "HU" else ""
            parts.append(f"mean intensity {i['mean']}{u} (range {i['min']} to {i['max']}{u})")
        text.append(f"{f.capitalize()} {les['index']}: " + ", ".join(parts) + ".")
    frag = report.get("small_fragments") or {}
    if frag.get("count"):
        text.append(f"{frag['count']} small fragment{'' if frag['count'] == 1 else 's'} of the mask "
                    f"({frag['voxels']} {'voxels' if report['dimensions'] == 3 else 'pixels'} in all) "
                    "are not counted as lesions.")
    if not report["spacing_known"]:
        text.append("The image carries no pixel spacing, so sizes are in pixels, not millimetres.")
    return " ".join(text)


def write_dicom_sr(report: dict[str, Any], series_folder: str | Path, seg_path: str | Path, out: str | Path, *,
                   overwrite: bool = False) -> Path:
    """Write ``report`` as a DICOM Comprehensive 3D SR measurement report (TID 1500) referencing the source series
    and the DICOM SEG at ``seg_path`` (segment 1, written by :func:`medfoundry.io.dicom_seg.write_dicom_seg`).
    One volumetric ROI group per lesion: long axis, short axis (mm), volume (mL), mean/min/max (HU)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medfoundry.files import atomic_output
    from medfoundry.io.dicom import list_series, read_dataset

    if not report["spacing_known"] or not report["measurable"]:
        raise ImageWriteError("a DICOM SR needs measurable lesions with known spacing (sizes in mm)")
    groups = list_series(series_folder)
    if len(groups) != 1:
        raise ImageWriteError(f"{series_folder}: need exactly one series to reference")
    datasets = [read_dataset(Path(f)) for f in next(iter(groups.values()))]
    for ds in datasets:  # some anonymisers blank the SOP UIDs; the file meta still names them
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if not ds.get("SOPClassUID"):
                ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
            if not ds.get("SOPInstanceUID"):
                ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
    seg = pydicom.dcmread(seg_path)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="medfoundry",
                                                                                  model_name=report["model"]))
    mm, ml = hd.sr.CodedConcept("mm", "UCUM", "millimeter"), hd.sr.CodedConcept("mL", "UCUM", "milliliter")
    hu = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
    groups_out = []
    for les in report["lesions"]:
        ms = [hd.sr.Measurement(name=codes.SCT.LongAxis, value=les["long_axis"], unit=mm),
              hd.sr.Measurement(name=codes.SCT.ShortAxis, value=les["short_axis"], unit=mm)]
        if "volume_ml" in les:
            ms.append(hd.sr.Measurement(name=codes.SCT.Volume, value=les["volume_ml"], unit=ml))
        if les.get("intensity", {}).get("units") == "HU":
            for key, code in (("mean", codes.SCT.Mean), ("min", codes.SCT.Minimum), ("max", codes.SCT.Maximum)):
                ms.append(hd.sr.Measurement(name=hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient"),
                                            value=les["intensity"][key], unit=hu,
                                            derivation=code))
        groups_out.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"lesion {les['index']}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
                source_series=hd.sr.SourceSeriesForSegmentation(datasets[0].SeriesInstanceUID)),
            finding_type=codes.SCT.Lesion, measurements=ms))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups_out)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*datasets, seg], content=content[0], series_instance_uid=hd.UID(), series_number=9002,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medfoundry",
        series_description="medfoundry structured report", is_complete=True, is_final=False, is_verified=False)
    with atomic_output(out, overwrite) as tmp:
        sr.save_as(tmp)
    return Path(out)
