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
