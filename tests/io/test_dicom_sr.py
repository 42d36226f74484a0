"""TID 1500 measurement reports (highdicom) of a DICOM SEG segment: built, written, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundry.io import read_image
from medfoundry.io.dicom_seg import write_dicom_seg
from medfoundry.io.dicom_sr import read_measurement_report, write_measurement_report
from medfoundry.tasks.measure import measure

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")


def test_report_of_a_seg_segment_round_trips(shared_data: Path, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from medfoundry.io.dicom import read_dataset

    folder = tmp_path / "ct"  # the example's anonymiser blanked its UIDs; a report needs them
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for p in sorted((shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom").glob("*.dcm")):
        ds = pydicom.dcmread(p)
        meta = ds.file_meta
        ds.SOPInstanceUID, ds.SOPClassUID = meta.MediaStorageSOPInstanceUID, meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(folder / p.name)
    image = read_image(folder)
    mask = np.zeros(image.spatial_shape, bool)
    mask[8:12, 200:240, 210:260] = True
    write_dicom_seg(mask, folder, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    sources = [read_dataset(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    m = measure(mask, image).to_dict()
    write_measurement_report(seg, sources, m, tmp_path / "sr.dcm")
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert sr.SOPClassUID.name == "Comprehensive 3D SR Storage"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    [row] = read_measurement_report(sr)
    assert row["segment"] == (seg.SOPInstanceUID, 1) and row["finding"] == "lesion 1"
    for key in ("volume_ml", "long_axis_mm", "short_axis_mm", "mean"):
        assert row[key] == pytest.approx(m[key], rel=1e-9), key
    assert m["units"] == "HU"
    with pytest.raises(Exception, match="exists"):
        write_measurement_report(seg, sources, m, tmp_path / "sr.dcm")
