"""The clinical round trip against a real Orthanc: upload the shared CT series, segment it through its dicomweb+
address with a box and propagation, store SEG and SR with --store, retrieve both, and find the same mask (voxel
for voxel) and the same measurements as the run on the local folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundry.cli.main import main
from medfoundry.io.dicomweb import fetch_series, search, store

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

BOX = [200.0, 200.0, 300.0, 300.0]
PROMPT = ["--slice", "10", "--box", ",".join(str(v) for v in BOX), "--propagate"]


def _with_uids(src: Path, dst: Path) -> tuple[str, str]:
    """Copy the example series, restoring the UIDs its anonymiser blanked (a PACS needs them)."""
    from pydicom.uid import generate_uid

    dst.mkdir()
    study, series = generate_uid(entropy_srcs=["medfoundry-pacs-study"]), generate_uid(entropy_srcs=["pacs-series"])
    for p in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        meta = ds.file_meta
        ds.SOPInstanceUID, ds.SOPClassUID = meta.MediaStorageSOPInstanceUID, meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, "PACS-ROUNDTRIP"
        ds.save_as(dst / p.name)
    return study, series


@pytest.mark.shared_data
@pytest.mark.slow
def test_segment_through_dicomweb_store_and_retrieve(orthanc, shared_data, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MEDFOUNDRY_DICOMWEB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ct"
    study, series = _with_uids(shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom", folder)
    store(orthanc.url, [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))])
    # the local-folder run: what `medfoundry segment FOLDER --slice 10 --box ... --propagate` computes (the
    # default segmenter: one box in 3D goes to medfoundry-box3d-tiny)
    from medfoundry.cli.segment import segment_one
    from medfoundry.io import read_image
    from medfoundry.predict.default_segmenter import open_default_segmenter
    from medfoundry.tasks.measure import measure

    local_mask, grid = segment_one(open_default_segmenter(), read_image(folder), [BOX], [], 10, True)
    local = measure(local_mask, grid).to_dict()
    assert local_mask.sum() > 100

    address = orthanc.address(study, series)
    assert main(["segment", address, *PROMPT, "--out", str(tmp_path / "seg.dcm"), "--store"]) == 0
    assert (tmp_path / "seg.dcm").exists() and (tmp_path / "seg_sr.dcm").exists()

    # retrieve what was stored, as a client of the PACS would
    rows = {r["Modality"]: r for r in search(orthanc.url, study=study)}
    assert set(rows) == {"CT", "SEG", "SR"}
    [seg_file] = fetch_series(rows["SEG"]["address"]).glob("*.dcm")
    [sr_file] = fetch_series(rows["SR"]["address"]).glob("*.dcm")
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(seg_file))
    ct = read_image(address)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in fetch_series(address).glob("*.dcm")]
    normal = ct.direction[:, 0]
    sources.sort(key=lambda ds: float(np.dot([float(x) for x in ds.ImagePositionPatient], normal)))
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], combine_segments=True)
    assert np.array_equal(pixels.astype(bool), local_mask.astype(bool))  # voxel for voxel

    from medfoundry.io.dicom_sr import read_measurement_report

    [finding] = read_measurement_report(pydicom.dcmread(sr_file))
    assert finding["segment"] == (seg.SOPInstanceUID, 1)
    for key in ("volume_ml", "long_axis_mm", "short_axis_mm", "mean"):
        assert finding[key] == pytest.approx(local[key], rel=1e-9), key
    assert local["units"] == "HU"

    # --store without a DICOMweb source is refused before anything is sent
    assert main(["segment", str(folder), *PROMPT, "--out", str(tmp_path / "x.dcm"), "--store"]) == 2
    assert "dicomweb+" in capsys.readouterr().err
