"""De-identification (PS3.15 Annex E basic profile): every DICOM file pydicom and nibabel ship, and the shared data."""

from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dicomanonymizer")
pydicom = pytest.importorskip("pydicom")

from medfoundry.errors import DeidentificationError, OutputExistsError  # noqa: E402
from medfoundry.io import read_image  # noqa: E402
from medfoundry.io.deid import Deidentifier, annex_e_table, deidentify, deidentify_bytes  # noqa: E402

#: values the table's dummy/empty actions write; an original that already held one of them may keep it
_DUMMIES = ("", "ANONYMIZED", "00010101", "000000.00", "00010101010101.000000+0000", "0", 0, "000Y", b"Anonymized",
            b"", None)


def _shipped_files() -> list[Path]:
    import nibabel
    import pydicom.data

    files = [Path(p) for p in pydicom.data.get_testdata_files()]
    root = Path(nibabel.__file__).parent
    files += [Path(p) for p in sorted(glob.glob(str(root / "**" / "*.dcm"), recursive=True))]
    return [p for p in files if p.is_file() and p.stat().st_size > 0]


def _table_index() -> list[tuple[int, int, int, int, str]]:
    rows = []
    for code, tags in annex_e_table().items():
        for tag in tags:
            group, element, gmask, emask = (*tag, 0xFFFF, 0xFFFF) if len(tag) == 2 else tag
            rows.append((group, element, gmask, emask, code))
    return rows


TABLE = _table_index()


def _action(tag) -> str | None:
    for group, element, gmask, emask, code in TABLE:
        if tag.group & gmask == group & gmask and tag.element & emask == element & emask:
            return code
    return None


def _plain(value):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return value if isinstance(value, (bytes, int, float)) or value is None else str(value)


def check_table(orig, new, where: str = "") -> int:
    """Assert that no attribute the table marks keeps its original (non-dummy) value; return how many were checked."""
    checked = 0
    for element in orig:
        code = _action(element.tag)
        if element.tag.is_private:
            assert element.tag not in new, f"{where}{element.tag}: private attribute kept"
            continue
        if code is None:
            if element.VR == "SQ" and element.tag in new and new[element.tag].VR == "SQ":
                for i, (a, b) in enumerate(zip(element.value or [], new[element.tag].value or [], strict=False)):
                    checked += check_table(a, b, f"{where}{element.keyword}[{i}].")
            continue
        before = _plain(element.value)
        if element.VR == "SQ" or before in _DUMMIES or before == [] or element.tag not in new:
            checked += element.tag not in new
            continue
        after = _plain(new[element.tag].value)
        assert after != before, f"{where}{element.keyword or element.tag} ({code}) keeps {before!r}"
        checked += 1
    return checked


def _pixels(ds):
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            return ds[keyword].value
    return None


def test_every_shipped_dicom_file_is_deidentified_or_refused():
    files = _shipped_files()
    assert len(files) > 150
    deid = Deidentifier()
    done, refused, checked = 0, [], 0
    for path in files:
        try:
            orig = pydicom.dcmread(path, force=True)
        except Exception:  # files pydicom cannot parse at all (deliberately broken test files)
            with pytest.raises(DeidentificationError):
                deidentify_bytes(path.read_bytes(), deid, str(path))
            refused.append(path.name)
            continue
        try:
            data = deidentify_bytes(path.read_bytes(), deid, str(path))
        except DeidentificationError as exc:
            refused.append(f"{path.name}: {exc.reason}")
            continue
        new = pydicom.dcmread(io.BytesIO(data), force=True)
        checked += check_table(orig, new, f"{path.name}: ")
        old_px, new_px = _pixels(orig), _pixels(new)
        assert (old_px is None) == (new_px is None), path.name
        if old_px is not None:
            assert new_px == old_px, f"{path.name}: pixel data changed"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if orig.get(keyword):
                assert new.get(keyword) and new.get(keyword) != orig.get(keyword), f"{path.name}: {keyword}"
        assert new.PatientIdentityRemoved == "YES"
        done += 1
    print(f"{done} de-identified, {len(refused)} refused, {checked} table attributes checked: {refused}")
    assert done >= 0.8 * len(files)
    assert checked > 1000


def test_uids_stay_consistent_within_a_study_and_differ_from_the_originals():
    import pydicom.data

    deid = Deidentifier()
    files = [Path(p) for p in pydicom.data.get_testdata_files("MR_small*.dcm")]
    assert len(files) > 3
    news = [pydicom.dcmread(io.BytesIO(deidentify_bytes(p.read_bytes(), deid, str(p)))) for p in files]
    origs = [pydicom.dcmread(p) for p in files]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        before = {str(o.get(keyword)) for o in origs}
        after = {str(n.get(keyword)) for n in news}
        assert len(after) == len(before)
        assert not after & before
    assert {n.PatientID for n in news} == {deid.pseudonym(origs[0].PatientID)}
    assert all(n.file_meta.MediaStorageSOPInstanceUID == n.SOPInstanceUID for n in news)
    other = Deidentifier()  # another key maps the same UID elsewhere
    assert other.new_uid(origs[0].StudyInstanceUID) != deid.new_uid(origs[0].StudyInstanceUID)


def test_date_profiles():
    import pydicom.data

    path = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    orig = pydicom.dcmread(path)
    assert orig.StudyDate
    kept = pydicom.dcmread(io.BytesIO(deidentify_bytes(path.read_bytes(), Deidentifier("retain-dates"))))
    assert kept.StudyDate == orig.StudyDate and kept.LongitudinalTemporalInformationModified == "UNMODIFIED"
    shifter = Deidentifier("shift-dates")
    shifted = pydicom.dcmread(io.BytesIO(deidentify_bytes(path.read_bytes(), shifter)))
    from datetime import date

    def day(text):
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    days = shifter.shift_days(str(orig.PatientID))
    assert 30 <= days <= 3650
    for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
        if orig.get(keyword):
            assert (day(orig.get(keyword)) - day(shifted.get(keyword))).days == days, keyword
    basic = pydicom.dcmread(io.BytesIO(deidentify_bytes(path.read_bytes(), Deidentifier())))
    assert basic.StudyDate != orig.StudyDate


def test_burned_in_annotation_is_refused_and_nothing_is_written(tmp_path):
    import pydicom.data

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "a.dcm")
    pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).save_as(src / "b.dcm")
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation"):
        deidentify(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # no temporary leftovers
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation"):
        deidentify(src / "a.dcm", tmp_path / "one.dcm")
    assert not (tmp_path / "one.dcm").exists()


def test_key_file_only_when_asked_and_continued(tmp_path):
    import pydicom.data

    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    deidentify(src, tmp_path / "a.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm"]
    key = tmp_path / "key.json"
    deidentify(src, tmp_path / "b.dcm", key=key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    data = json.loads(key.read_text())
    orig = pydicom.dcmread(src)
    assert data["uids"][orig.StudyInstanceUID] == pydicom.dcmread(tmp_path / "b.dcm").StudyInstanceUID
    deidentify(src, tmp_path / "c.dcm", key=key)  # the key continues the mapping
    assert pydicom.dcmread(tmp_path / "c.dcm").StudyInstanceUID == pydicom.dcmread(tmp_path / "b.dcm").StudyInstanceUID
    assert pydicom.dcmread(tmp_path / "a.dcm").StudyInstanceUID != pydicom.dcmread(tmp_path / "b.dcm").StudyInstanceUID
    with pytest.raises(OutputExistsError):
        deidentify(src, tmp_path / "c.dcm", key=key)


@pytest.mark.shared_data
def test_shared_series_reads_as_the_same_volume(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom"
    written = deidentify(folder, tmp_path / "ct", profile="basic")
    assert len(written) == len(list(folder.glob("*.dcm")))
    assert not any(orig.name in {p.name for p in written} for orig in folder.glob("*.dcm"))  # names carry UIDs
    a, b = read_image(folder), read_image(tmp_path / "ct")
    assert np.array_equal(a.array, b.array) and a.array.dtype == b.array.dtype
    assert a.spacing == b.spacing and a.origin == b.origin and np.allclose(a.direction, b.direction)
    origs = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    news = [pydicom.dcmread(p) for p in written]
    checked = sum(check_table(o, n) for o, n in zip(origs, news, strict=False))  # sorted orders differ; table only
    assert checked > 0
    frames = {n.FrameOfReferenceUID for n in news}
    assert len(frames) == 1 and not frames & {o.FrameOfReferenceUID for o in origs}
    sops = {n.file_meta.MediaStorageSOPInstanceUID for n in news}  # the example's anonymiser blanked SOPInstanceUID
    assert len(sops) == len(news) and not sops & {o.file_meta.MediaStorageSOPInstanceUID for o in origs}
    cxr = next((shared_data / "siim_cxr_dicom_sample").glob("*.dcm"))
    deidentify(cxr, tmp_path / "cxr.dcm")
    assert np.array_equal(read_image(cxr).array, read_image(tmp_path / "cxr.dcm").array)
    check_table(pydicom.dcmread(cxr), pydicom.dcmread(tmp_path / "cxr.dcm"), "cxr: ")


def test_cli_deid(tmp_path, capsys):
    import pydicom.data

    from medfoundry.cli.main import main

    src = pydicom.data.get_testdata_file("CT_small.dcm")
    assert main(["deid", src, str(tmp_path / "o.dcm"), "--profile", "shift-dates", "--key", str(tmp_path / "k")]) == 0
    assert "1 file" in capsys.readouterr().out
    assert main(["deid", src, str(tmp_path / "o.dcm")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "k")
