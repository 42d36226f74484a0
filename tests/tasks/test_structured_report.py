"""Structured reports: JSON from a mask, a narrative with no number outside the JSON, pixels without spacing,
empty masks, and a DICOM SR (TID 1500) that references the series and the SEG."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from medfoundry.errors import ImageWriteError, InputContractError
from medfoundry.io.image import MedImage
from medfoundry.tasks.structured_report import narrative, structured_report


def _numbers(obj) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_numbers(v) for v in obj)) if obj else set()
    if isinstance(obj, bool) or not isinstance(obj, int | float):
        return set()
    return {str(obj)}


def _volume(spacing_source: str = "header") -> MedImage:
    arr = np.full((8, 32, 32), -50.0, np.float32)
    arr[2:5, 4:14, 4:20] = 40.0
    return MedImage(array=arr, spacing=(2.0, 0.5, 0.5), modality="CT", units="HU", source="test-volume",
                    meta={"spacing_source": spacing_source})


def _mask() -> np.ndarray:
    m = np.zeros((8, 32, 32), bool)
    m[2:5, 4:14, 4:20] = True
    m[5:7, 24:30, 24:30] = True  # a second lesion (72 voxels)
    m[0, 30, 30] = True  # a speck: a fragment, not a lesion
    return m


def test_json_and_narrative_numbers_come_from_the_json():
    img = _volume()
    r = structured_report(_mask(), img, model="m", prompt={"box_xyxy": [4, 4, 20, 14], "slice": 3, "propagate": True},
                          region="liver")
    assert r["lesion_count"] == 2 and r["size_units"] == "mm" and r["region"] == "liver"
    assert r["small_fragments"] == {"count": 1, "voxels": 1}
    big = r["lesions"][0]
    assert big["slice_range"] == [2, 4] and big["volume_ml"] == round(3 * 10 * 16 * 2 * 0.25 / 1000, 2)
    assert big["long_axis"] == round(float(np.hypot(10 * 0.5, 16 * 0.5)), 1)
    assert big["intensity"] == {"mean": 40.0, "min": 40.0, "max": 40.0, "units": "HU"}
    text = narrative(r)
    assert "liver" in text and "mm" in text and "HU" in text
    allowed = _numbers(r)
    for num in re.findall(r"-?\d+(?:\.\d+)?", text):
        assert num in allowed, (num, text)


def test_no_spacing_means_pixels_never_mm():
    r = structured_report(_mask(), _volume("default (none in file)"), model="m")
    assert r["size_units"] == "px" and "volume_ml" not in r["lesions"][0]
    text = narrative(r)
    assert "mm" not in text.replace("millimetres", "") and "pixels" in text
    assert not set(re.findall(r"-?\d+(?:\.\d+)?", text)) - _numbers(r)


def test_empty_mask_is_not_measurable():
    r = structured_report(np.zeros((8, 32, 32), bool), _volume(), model="m")
    assert r["lesion_count"] == 0 and not r["measurable"] and r["lesions"] == []
    assert "not measurable" in narrative(r)
    assert not re.findall(r"\d", narrative(r))


def test_2d_area_and_shape_mismatch():
    img = replace(_volume().slice(3), meta={"spacing_source": "header"})
    r = structured_report(_mask()[3], img, model="m")
    assert r["dimensions"] == 2 and r["lesions"][0]["area_mm2"] == 10 * 16 * 0.25
    with pytest.raises(InputContractError, match="shape"):
        structured_report(np.zeros((3, 3), bool), img, model="m")


@pytest.mark.shared_data
def test_dicom_sr_references_series_and_seg(shared_data, tmp_path):
    pytest.importorskip("highdicom")
    import pydicom

    from medfoundry.io import read_image
    from medfoundry.io.dicom_seg import write_dicom_seg
    from medfoundry.tasks.structured_report import write_dicom_sr

    folder = shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom"
    img = read_image(folder)
    mask = np.zeros(img.spatial_shape, bool)
    mask[5:9, 100:130, 100:140] = True
    r = structured_report(mask, img, model="m", prompt={"box_xyxy": [100, 100, 140, 130], "slice": 6})
    seg = write_dicom_seg(mask, folder, tmp_path / "seg.dcm")
    out = write_dicom_sr(r, folder, seg, tmp_path / "sr.dcm")
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    seg_uid = pydicom.dcmread(seg).SOPInstanceUID
    refs = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert seg_uid in refs and len(refs) > 1
    dumped = str(ds)
    assert str(r["lesions"][0]["long_axis"]) in dumped and str(r["lesions"][0]["volume_ml"]) in dumped
    with pytest.raises(ImageWriteError):
        write_dicom_sr(structured_report(np.zeros_like(mask), img, model="m"), folder, seg, tmp_path / "e.dcm")


def test_cli_report_needs_a_bank_or_a_prompt(tmp_path, capsys):
    from medfoundry.cli.main import main

    img = tmp_path / "x.npy"
    np.save(img, np.zeros((16, 16), np.float32))
    assert main(["report", str(img)]) == 2
    assert "--bank" in capsys.readouterr().err
    assert main(["report", str(img), "--structured"]) == 2
    assert "needs a prompt" in capsys.readouterr().err
