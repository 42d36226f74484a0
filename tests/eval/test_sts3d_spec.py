"""The sts-3d benchmark: its fixed patient split, its case table, the spec's HU and key-slice columns, and a
key slice without an object refused before any result is written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfoundry.cli.main import main
from medfoundry.eval.prepare import sts_split
from medfoundry.eval.specs import SpecError, load_cases, load_spec

REPORT = {"STS_005", "STS_018", "STS_021", "STS_028", "STS_035", "STS_036", "STS_038", "STS_048"}
PATIENTS = ["STS_003", "STS_005", "STS_009", "STS_016", "STS_018", "STS_019", "STS_021", "STS_025", "STS_028",
            "STS_029", "STS_033", "STS_034", "STS_035", "STS_036", "STS_037", "STS_038", "STS_043", "STS_044",
            "STS_045", "STS_048"]


def test_split_is_fixed_and_independent_of_row_order() -> None:
    split = sts_split(PATIENTS)
    assert {p for p, s in split.items() if s == "report"} == REPORT
    assert sum(s == "tune" for s in split.values()) == 12
    assert sts_split(PATIENTS[::-1]) == split


def test_units_other_than_hu_are_refused(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ntask: segmentation-3d\ndataset: {csv: a.csv, units: kelvin}\nmetrics: [dice]\n")
    with pytest.raises(SpecError, match="kelvin"):
        load_spec(spec)


def _ball_case(tmp_path: Path, key_slice: int) -> Path:
    zz, yy, xx = np.mgrid[0:9, 0:64, 0:64]
    ball = ((zz - 4) / 3.5) ** 2 + ((yy - 30) / 12) ** 2 + ((xx - 28) / 10) ** 2 <= 1
    ct = np.where(ball, 45, -90) + np.random.default_rng(0).integers(-5, 5, ball.shape)
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])  # LPS voxel axes, as the STS NIfTI files
    nib.save(nib.Nifti1Image(ct.transpose(2, 1, 0).astype(np.int16), affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(ball.transpose(2, 1, 0).astype(np.uint8), affine), tmp_path / "gtv.nii.gz")
    (tmp_path / "cases.csv").write_text(f"id,image,mask,key_slice\nball,ct.nii.gz,gtv.nii.gz,{key_slice}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ntask: segmentation-3d\ndataset:\n  csv: {tmp_path / 'cases.csv'}\n  units: HU\n"
                    "  key_slice: key_slice\nmetrics: [dice]\nbootstrap: 20\n")
    return spec


def test_key_slice_column_and_hu_units_reach_the_harness(tmp_path: Path) -> None:
    spec = _ball_case(tmp_path, 3)  # not the largest slice (4): the column decides
    assert main(["eval", "--model", "medfoundry-sam-lite", "--benchmark", str(spec), "--out",
                 str(tmp_path / "run")]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    case = res["per_case"][0]
    assert case["key_slice"] == 3 and case["slices_true"] == [1, 7]
    assert res["metrics"]["dice"]["value"] > 0.7


def test_key_slice_without_object_is_refused_and_no_results_are_written(tmp_path: Path) -> None:
    spec = _ball_case(tmp_path, 8)  # slice 8 holds no tumour
    assert main(["eval", "--model", "medfoundry-sam-lite", "--benchmark", str(spec), "--out",
                 str(tmp_path / "run")]) != 0
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "report.html").exists()


def test_prepared_table_and_builtin_spec_on_shared_data(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    from medfoundry.eval.prepare import _sts

    table = _sts(shared_data.resolve(), tmp_path)
    assert table is not None
    monkeypatch.setenv("MEDFOUNDRY_EVAL_DATA", str(tmp_path))
    spec = load_spec("sts-3d")
    assert spec.dataset.units == "HU" and spec.dataset.filter == {"split": "report"}
    cases = load_cases(spec)
    assert {c["id"] for c in cases} == REPORT
    assert all(isinstance(c["key_slice"], int) for c in cases)
