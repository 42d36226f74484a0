"""``serve --deid``: DICOM uploads are de-identified before they are stored; nothing stored or answered keeps PHI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("dicomanonymizer")

from fastapi.testclient import TestClient

from medfoundry.io import read_image
from medfoundry.io.deid import Deidentifier
from medfoundry.serve.app import create_app
from medfoundry.serve.workbench import Workbench


def test_uploads_are_deidentified_before_storage(tmp_path: Path) -> None:
    import pydicom
    import pydicom.data

    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    orig = pydicom.dcmread(src)
    phi = [str(orig.PatientName), str(orig.PatientID), orig.StudyInstanceUID, orig.SOPInstanceUID,
           str(orig.InstitutionName), orig.StudyDate]
    bench = Workbench(store=tmp_path / "store", deid=Deidentifier())
    with TestClient(create_app(bench)) as client:
        r = client.post("/v1/images", files={"file": ("Doe^John_CT.dcm", src.read_bytes())})
        assert r.status_code == 200, r.text
        body = r.text
        bad = client.post("/v1/images", files={"file": ("Doe^John.png", b"\x89PNG\r\n\x1a\nnot really")})
        assert bad.status_code == 400 and "Doe" not in bad.text
    bench.close()
    assert "Doe" not in body and r.json()["filename"] == "upload.dcm"
    stored = [p for p in (tmp_path / "store").iterdir() if p.is_file()]
    assert len(stored) == 1
    raw = stored[0].read_bytes()
    for value in phi:
        assert value.encode() not in raw and value not in body, value
    ds = pydicom.dcmread(stored[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.PixelData == orig.PixelData
    assert np.array_equal(read_image(stored[0]).array, read_image(src).array)


def _burned_ct() -> bytes:
    """pydicom's CT_small as a GE LightSpeed VCT localizer declaring burned-in annotation, with a bright block in
    rows 5-19, columns 10-59: inside the region (0, 0, 80, 85) that deid's "LightSpeed Localizers" filter names."""
    import io

    import pydicom
    import pydicom.data

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.Manufacturer, ds.ManufacturerModelName = "GE MEDICAL SYSTEMS", "LightSpeed VCT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.BurnedInAnnotation = "YES"
    px = ds.pixel_array.copy()
    px[5:20, 10:60] = px.max()
    ds.PixelData = px.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_burned_in_text_is_refused_unless_the_server_cleans_pixels(tmp_path: Path) -> None:
    pytest.importorskip("deid")
    import pydicom

    data = _burned_ct()
    refusing = Workbench(store=tmp_path / "refuse", deid=Deidentifier())
    with TestClient(create_app(refusing)) as client:
        r = client.post("/v1/images", files={"file": ("scan.dcm", data)})
        assert r.status_code == 400 and "--clean-pixels" in r.text, r.text
    assert not [p for p in (tmp_path / "refuse").iterdir()]  # nothing kept, not even a partial file
    refusing.close()

    cleaning = Workbench(store=tmp_path / "clean", deid=Deidentifier(clean_pixels=True))
    with TestClient(create_app(cleaning)) as client:
        r = client.post("/v1/images", files={"file": ("scan.dcm", data)})
        assert r.status_code == 200, r.text
        image_id = r.json()["id"]
        plane = client.get(f"/v1/images/{image_id}/planes/axial/0")
        rows, cols = int(plane.headers["X-Rows"]), int(plane.headers["X-Cols"])
        values = np.frombuffer(plane.content, dtype="<f4").reshape(rows, cols)
    cleaning.close()
    stored = [p for p in (tmp_path / "clean").iterdir() if p.is_file()]
    assert len(stored) == 1
    ds = pydicom.dcmread(stored[0])
    assert ds.BurnedInAnnotation == "NO" and not ds.pixel_array[0:85, 0:80].any()
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]  # Basic Profile, Clean Pixel Data Option
    original = read_image(stored[0])  # what the viewer shows is the cleaned image
    assert values.shape == original.array.shape[-2:]
    block = values[5:20, 10:60]
    assert np.all(block == block.flat[0]) and np.all(values[0:85, 0:80] == block.flat[0])


def test_serve_cli_passes_clean_pixels_and_refuses_it_without_deid() -> None:
    import argparse

    from medfoundry.cli import serve as serve_cli
    from medfoundry.errors import MedfoundryError

    assert serve_cli._deidentifier(False) is None
    assert serve_cli._deidentifier(True).clean_pixels is False
    assert serve_cli._deidentifier(True, clean_pixels=True).clean_pixels is True
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--clean-pixels", "--store", "unused"])
    assert args.clean_pixels and not args.deid and args.seg_threads == 1 and not args.fast_prompts
    with pytest.raises(MedfoundryError, match="--deid"):
        serve_cli.run(args)
