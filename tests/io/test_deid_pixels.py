"""Pixel cleaning of burned-in annotation (``deid --clean-pixels``) on the curated filters of pydicom's deid package,
and the server entry point ``deidentify_bytes`` (no PHI in logs, warnings, output or errors)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dicomanonymizer")
pytest.importorskip("deid")
pydicom = pytest.importorskip("pydicom")

from medfoundry.errors import DeidentificationError  # noqa: E402
from medfoundry.io.deid import Deidentifier, deidentify, deidentify_bytes  # noqa: E402
from medfoundry.io.deid_pixels import BurnedInAnnotationError, NoPixelFilterError, find_regions  # noqa: E402

#: (pydicom test file, device fields that one deid filter matches, the region it names as (x0, y0, x1, y1))
CASES = {
    # deid "LightSpeed Localizers" (graylist): GE LightSpeed VCT CT localizers, text in 0,0,80,85
    "ct": ("CT_small.dcm", {"Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "LightSpeed VCT",
                            "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, (0, 0, 80, 85)),
    # deid "Logiq US (LOGIQ9)" (graylist, CTP coordinates 0,0,640,30): an RGB ultrasound image
    "us_rgb": ("examples_rgb_color.dcm", {"Modality": "US", "Manufacturer": "GE Healthcare",
                                          "ManufacturerModelName": "LOGIQ9"}, (0, 0, 640, 30)),
    # the same filter on a JPEG 2000 (YBR_RCT) ultrasound image: decoded, cleaned, written uncompressed as RGB
    "us_j2k": ("examples_jpeg2k.dcm", {"Modality": "US", "Manufacturer": "GE Healthcare",
                                       "ManufacturerModelName": "LOGIQ9"}, (0, 0, 640, 30)),
    # and on a two-frame RLE RGB image: every frame is cleaned
    "us_frames": ("SC_rgb_rle_2frame.dcm", {"Modality": "US", "Manufacturer": "GE Healthcare",
                                            "ManufacturerModelName": "LOGIQ9"}, (0, 0, 640, 30)),
}


def _burned(case: str, burn: bool = True):
    """The case's test file declaring burned-in annotation, with the device fields set; with ``burn`` (uncompressed
    files) a bright "text" block is written inside the filter's region (rows 5-19, columns 10-59 lie in all)."""
    import pydicom.data

    name, fields, _ = CASES[case]
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    ds.BurnedInAnnotation = "YES"
    ds.PatientName, ds.PatientID = "Burned^Annie", "BURN-0042"
    if burn and not ds.file_meta.TransferSyntaxUID.is_compressed:
        px = ds.pixel_array.copy()
        if ds.SamplesPerPixel == 1:
            px[5:20, 10:60] = px.max()
        else:
            px[..., 5:20, 10:60, :] = 255
        ds.PixelData = px.tobytes()
    return ds


def _bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_declared_burned_in_text_is_blanked_where_a_deid_filter_names_the_region(case):
    ds = _burned(case)
    before = ds.pixel_array
    x0, y0, x1, y1 = CASES[case][2]
    frames = before if before.ndim == (4 if ds.SamplesPerPixel == 3 else 3) else before[None]
    assert frames[:, y0:y1, x0:x1].any(), "the region must hold something to clean"
    with pytest.raises(BurnedInAnnotationError, match="--clean-pixels"):
        deidentify_bytes(_bytes(ds), Deidentifier(), case)  # refused unless cleaning is asked for
    deid = Deidentifier(clean_pixels=True)
    new = pydicom.dcmread(io.BytesIO(deidentify_bytes(_bytes(ds), deid, case)))
    after = new.pixel_array
    assert after.shape == before.shape and after.dtype == before.dtype
    after_frames = after if after.ndim == frames.ndim else after[None]
    assert not after_frames[:, y0:y1, x0:x1].any()  # the named region is black in every frame and channel
    outside = np.ones(frames.shape[1:3], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(after_frames[:, outside], frames[:, outside])  # nothing else changed
    assert new.BurnedInAnnotation == "NO" and not new.file_meta.TransferSyntaxUID.is_compressed
    codes = [item.CodeValue for item in new.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]  # Basic Profile, Clean Pixel Data Option
    assert str(new.PatientName) != "Burned^Annie" and new.PatientID != "BURN-0042"  # the header too
    assert deid.cleaned[case].regions == ((x0, y0, x1, y1),) and deid.cleaned[case].filters


def test_a_shipped_image_a_filter_knows_is_cleaned_even_undeclared():
    """pydicom's examples_palette.dcm (Philips CX50 ultrasound) matches deid's CX50 filter as shipped."""
    import pydicom.data

    path = Path(pydicom.data.get_testdata_file("examples_palette.dcm"))
    orig = pydicom.dcmread(path)
    assert str(orig.get("BurnedInAnnotation", "")).upper() != "YES"
    _, found = find_regions(orig)
    assert found.regions == ((0, 0, 800, 59),)
    plain = pydicom.dcmread(io.BytesIO(deidentify_bytes(path, Deidentifier())))
    assert plain.PixelData == orig.PixelData  # without cleaning nothing changes
    cleaned = pydicom.dcmread(io.BytesIO(deidentify_bytes(path, Deidentifier(clean_pixels=True))))
    assert orig.pixel_array[:59].any() and not cleaned.pixel_array[:59].any()
    assert np.array_equal(cleaned.pixel_array[59:], orig.pixel_array[59:])
    assert cleaned.PhotometricInterpretation == "PALETTE COLOR" and cleaned.BurnedInAnnotation == "NO"


def test_images_without_a_filter_are_refused_named_and_nothing_is_written(tmp_path):
    import pydicom.data

    src = tmp_path / "in"
    src.mkdir()
    _burned("ct").save_as(src / "ct_localizer.dcm")
    for name in ("MR_small.dcm", "JPEG2000.dcm"):  # a Toshiba MR, a GE NM: no deid filter names their regions
        ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
        ds.BurnedInAnnotation = "YES"
        ds.save_as(src / name)
    pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).save_as(src / "clean.dcm")
    with pytest.raises(BurnedInAnnotationError) as info:
        deidentify(src, tmp_path / "out", clean_pixels=True)
    message = str(info.value)
    assert "2 of 4 images" in message and "MR_small.dcm" in message and "JPEG2000.dcm" in message
    assert "ct_localizer" not in message and "clean.dcm" not in message
    assert "ManufacturerModelName='MRT50H1'" in message  # says which device has no filter
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    with pytest.raises(BurnedInAnnotationError, match="3 of 4 images"):  # without cleaning, all three declared
        deidentify(src, tmp_path / "out")
    with pytest.raises(NoPixelFilterError, match="MRT50H1"):
        deidentify(src / "MR_small.dcm", tmp_path / "one.dcm", clean_pixels=True)
    assert not (tmp_path / "one.dcm").exists() and not (tmp_path / "out").exists()


def test_cli_clean_pixels(tmp_path, capsys):
    from medfoundry.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    _burned("ct").save_as(src / "a.dcm")
    _burned("us_rgb").save_as(src / "b.dcm")
    assert main(["deid", str(src), str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 images" in err and "--clean-pixels" in err and not (tmp_path / "refused").exists()
    assert main(["deid", str(src), str(tmp_path / "out"), "--clean-pixels"]) == 0
    out = capsys.readouterr().out
    assert "2 files de-identified" in out and "2 with burned-in text regions blanked" in out
    assert "(0,0)-(80,85)" in out and "(0,0)-(640,30)" in out
    for p in (tmp_path / "out").iterdir():
        ds = pydicom.dcmread(p)
        assert ds.BurnedInAnnotation == "NO" and not ds.pixel_array[:30, :80].any()


def test_server_entry_point_logs_and_says_no_phi(tmp_path, caplog, capfd, recwarn):
    """What ``serve --deid`` calls: with pydicom's debug log on (which quotes every value it reads), nothing logged,
    warned, printed, returned or raised carries the patient's identity."""
    import pydicom.config
    import pydicom.data

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    phi = ["Phiona^Secret", "PHI-778899", "Saint Nowhere Clinic", "1961-13-45"]
    ds.PatientName, ds.PatientID, ds.InstitutionName = phi[:3]
    ds.PatientBirthDate = phi[3]  # not a valid DA value: pydicom warns about it, quoting it
    refused = _burned("ct")
    refused.PatientName, refused.PatientID, refused.InstitutionName = phi[:3]
    refused.ManufacturerModelName = "Unknown Scanner"
    broken = _bytes(ds) + b"\xe1\x7f\x02\x10SL\x01\x00\x90"  # a 1-byte SL element: fails when decoded
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # (setting the invalid date above warned, quoting it: that is the test, not the code under test)
    recwarn.clear()
    capfd.readouterr()
    pydicom.config.debug(True)
    try:
        deid = Deidentifier()
        out = deidentify_bytes(_bytes(ds), deid, "upload.dcm")
        path = tmp_path / "upload.part"
        path.write_bytes(_bytes(ds))
        out_from_path = deidentify_bytes(path, deid, "upload.dcm")
        errors = []
        for data, cleaner in ((_bytes(refused), Deidentifier(clean_pixels=True)), (_bytes(refused), deid),
                              (broken, deid)):
            with pytest.raises(DeidentificationError) as info:
                deidentify_bytes(data, cleaner, "upload.dcm")
            errors.append(str(info.value))
    finally:
        pydicom.config.debug(False)
    assert all("upload.dcm" in e for e in errors)
    captured = capfd.readouterr()
    said = caplog.text + captured.out + captured.err + " ".join(str(w.message) for w in recwarn) + " ".join(errors)
    for value in phi:
        assert value not in said, value
        assert value.encode() not in out and value.encode() not in out_from_path, value
    assert out == out_from_path


def test_one_deidentifier_shared_by_server_threads_keeps_patients_apart():
    """A server de-identifies concurrent uploads with one Deidentifier: each keeps its own patient's pseudonym."""
    from concurrent.futures import ThreadPoolExecutor

    import pydicom.data

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    uploads = []
    for i in range(24):
        ds.PatientID, ds.PatientName = f"THREAD-{i}", f"Thread^{i}"
        uploads.append((f"THREAD-{i}", _bytes(ds)))
    deid = Deidentifier("shift-dates")
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda u: deidentify_bytes(u[1], deid, "upload.dcm"), uploads))
    for (patient, _), out in zip(uploads, outs, strict=True):
        new = pydicom.dcmread(io.BytesIO(out))
        assert new.PatientID == deid.pseudonym(patient) == str(new.PatientName)
