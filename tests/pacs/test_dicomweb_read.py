"""DICOMweb search and read against a real Orthanc: same volume as the folder, cache, and typed errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from medfoundry.errors import ImageReadError, InputContractError, PacsError
from medfoundry.io import read_image
from medfoundry.io.dicomweb import fetch_series, parse_address, search, store

pydicom = pytest.importorskip("pydicom")


def _series(folder: Path, n: int, *, patient: str, study: str, series: str, skip: int | None = None) -> list:
    """``n`` CT slices 2.5 mm apart built from pydicom's CT_small (a different pixel offset per slice)."""
    import pydicom.data
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        if i == skip:
            continue
        ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.5 * i]
        px = ds.pixel_array.copy()
        px[:, :4] = i * 10
        ds.PixelData = px.tobytes()
        ds.save_as(folder / f"{i:03d}.dcm")
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory):
    from pydicom.uid import generate_uid

    from medfoundry.io.dicom import read_dataset

    root = tmp_path_factory.mktemp("series")
    study, other_study = generate_uid(), generate_uid()
    good = _series(root / "good", 6, patient="PACS-A", study=study, series=generate_uid())
    second = _series(root / "second", 3, patient="PACS-A", study=other_study, series=generate_uid())
    third = _series(root / "third", 3, patient="PACS-A", study=other_study, series=generate_uid())
    holed = _series(root / "holed", 6, patient="PACS-B", study=generate_uid(), series=generate_uid(), skip=3)
    datasets = [read_dataset(p) for p in sorted((root / "good").glob("*.dcm"))]
    random.Random(0).shuffle(datasets)  # slices arrive out of order
    store(orthanc.url, datasets + second + third + holed)
    return {"root": root, "good": good, "mixed_study": other_study, "holed": holed}


def test_search_filters(orthanc, uploaded) -> None:
    rows = search(orthanc.url, patient="PACS-A")
    assert len(rows) == 3 and {r["Modality"] for r in rows} == {"CT"}
    good = next(r for r in rows if r["SeriesInstanceUID"] == uploaded["good"][0].SeriesInstanceUID)
    assert int(good["NumberOfSeriesRelatedInstances"]) == 6
    assert parse_address(good["address"]).series == good["SeriesInstanceUID"]
    assert search(orthanc.url, patient="PACS-A", modality="MR") == []
    assert len(search(orthanc.url, patient="PACS-A", study_date="20040101-20040131")) == 3  # CT_small: 20040119
    assert search(orthanc.url, patient="PACS-A", study_date="20100101-20101231") == []
    assert len(search("dicomweb+" + orthanc.url, patient="PACS-B")) == 1


def test_read_equals_the_folder_and_is_cached(orthanc, uploaded, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_DICOMWEB_CACHE", str(tmp_path / "cache"))
    first = uploaded["good"][0]
    address = orthanc.address(first.StudyInstanceUID, first.SeriesInstanceUID)
    remote, local = read_image(address), read_image(uploaded["root"] / "good")
    assert remote.source == address
    assert np.array_equal(remote.array, local.array) and remote.array.dtype == local.array.dtype
    assert remote.spacing == local.spacing and remote.origin == local.origin
    assert np.array_equal(remote.direction, local.direction)
    assert [int(remote.array[z, 0, 0]) for z in range(6)] == [int(local.array[z, 0, 0]) for z in range(6)]
    folder = fetch_series(address)
    files = sorted(folder.glob("*.dcm"))
    assert {p.stem for p in files} == {ds.SOPInstanceUID for ds in uploaded["good"]}  # keyed by SOP Instance UID
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[2].unlink()
    again = read_image(address)  # only the missing instance is retrieved again
    assert np.array_equal(again.array, local.array)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files if p != files[2]) and files[2].exists()


def test_bad_addresses_and_servers(orthanc, uploaded, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_DICOMWEB_CACHE", str(tmp_path / "cache"))
    first = uploaded["good"][0]
    with pytest.raises(PacsError, match=r"search .*no series 1\.2\.3"):
        read_image(orthanc.address(first.StudyInstanceUID, "1.2.3"))
    with pytest.raises(PacsError, match=r"no study 1\.2\.3\.4"):
        read_image(orthanc.address("1.2.3.4"))
    with pytest.raises(PacsError, match="holds 2 series"):
        read_image(orthanc.address(uploaded["mixed_study"]))
    holed = uploaded["holed"][0]
    with pytest.raises(ImageReadError, match="a slice is missing"):
        read_image(orthanc.address(holed.StudyInstanceUID, holed.SeriesInstanceUID))
    with pytest.raises(InputContractError, match="not a DICOM UID"):
        read_image(orthanc.address("1.2.abc", "1.2"))
    with ClosedPort() as port:
        with pytest.raises(PacsError, match="unreachable"):
            read_image(f"dicomweb+http://127.0.0.1:{port}/dicom-web/studies/1.2/series/1.3")
        with pytest.raises(PacsError, match="unreachable"):
            search(f"http://127.0.0.1:{port}/dicom-web")


def test_store_refusal_names_what_was_stored(orthanc, tmp_path) -> None:
    from pydicom.uid import generate_uid

    accepted, refused = _series(tmp_path / "s", 2, patient="STOW-REFUSED", study=generate_uid(),
                                series=generate_uid())
    refused.Modality = "SR"  # the server's filter refuses SR objects of this patient
    with pytest.raises(PacsError, match=rf"store .*{refused.SOPInstanceUID} .*does not hold it.*already stored: "
                                        rf"{accepted.SOPInstanceUID}"):
        store(orthanc.url, [accepted, refused])


class ClosedPort:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


def test_cli_pacs_search(orthanc, uploaded, capsys) -> None:
    import json

    from medfoundry.cli.main import main

    assert main(["pacs", "search", orthanc.url, "--patient", "PACS-A", "--modality", "CT", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["address"].startswith("dicomweb+http://127.0.0.1:") for r in rows)
    assert main(["pacs", "search", orthanc.url, "--patient", "PACS-B"]) == 0
    assert "1 series" in capsys.readouterr().out
    assert main(["pacs", "search", "http://127.0.0.1:9/dicom-web"]) == 2
    assert "unreachable" in capsys.readouterr().err
