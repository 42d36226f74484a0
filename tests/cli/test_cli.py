"""The command line: JSON output, one-line errors with non-zero exit, no overwrites, no import side effects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from safetensors.torch import load_file

from medfoundry.cli.main import main

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json(capsys) -> None:
    code, out, _ = run(capsys, "info", str(CT), "--json")
    data = json.loads(out)
    assert code == 0 and data["modality"] == "CT" and data["units"] == "HU" and data["shape"] == [128, 128]
    assert "phi" not in data and "PatientName" not in out
    code, out, _ = run(capsys, "info", str(CT), "--json", "--show-phi")
    assert "PatientName" in json.loads(out)["phi"]


def test_info_table(capsys) -> None:
    code, out, _ = run(capsys, "info", str(CT))
    assert code == 0 and "HU" in out and "LPS" in out


@pytest.mark.parametrize("argv", [["info", "/no/such/file.dcm"], ["models", "info", "nonexistent-model"],
                                  ["convert", str(CT), "out.bmp"], ["models", "fetch", "--model", "chexzero"]])
def test_errors_are_one_line_without_traceback(capsys, tmp_path, monkeypatch, argv) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("medfoundry: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_convert_and_overwrite(capsys, tmp_path: Path) -> None:
    out_png = tmp_path / "ct.png"
    assert run(capsys, "convert", str(CT), str(out_png), "--window", "lung")[0] == 0
    before = out_png.read_bytes()
    code, _, err = run(capsys, "convert", str(CT), str(out_png), "--window", "bone")
    assert code == 2 and "--overwrite" in err and out_png.read_bytes() == before
    assert run(capsys, "convert", str(CT), str(out_png), "--window", "bone", "--overwrite")[0] == 0
    assert out_png.read_bytes() != before
    assert run(capsys, "convert", str(CT), str(tmp_path / "ct.nii.gz"))[0] == 0
    assert run(capsys, "convert", str(CT), str(tmp_path / "ct.npy"))[0] == 0
    assert np.load(tmp_path / "ct.npy").shape == (128, 128)


def test_models_list_json(capsys) -> None:
    _, out, _ = run(capsys, "models", "list", "--json")
    records = {r["name"]: r for r in json.loads(out)}
    for name in ("biomedclip", "chexzero", "medclip-vit", "rad-dino", "sam-vit-b", "medsam", "litemedsam",
                 "sam-med2d", "medsam2"):
        assert {"family", "license", "commercial_use", "gated"} <= records[name].keys()
    _, out, _ = run(capsys, "models", "list", "--family", "VPM-generalist", "--json")
    assert {r["family"] for r in json.loads(out)} == {"VPM-generalist"}
    _, out, _ = run(capsys, "models", "list", "--commercial", "--json")
    assert all(r["commercial_use"] for r in json.loads(out))


def test_models_info_and_convert(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "models", "info", "medsam", "--json")
    assert code == 0 and json.loads(out)["preprocess"]["image_size"] == 1024
    torch.save({"w": torch.ones(3)}, tmp_path / "c.pth")
    code, _, _ = run(capsys, "models", "convert", str(tmp_path / "c.pth"), str(tmp_path / "c.safetensors"))
    assert code == 0 and torch.equal(load_file(str(tmp_path / "c.safetensors"))["w"], torch.ones(3))
    code, out, _ = run(capsys, "models", "fetch", "--model", "sam-vit-b", "--weights", str(tmp_path / "c.pth"))
    assert code == 0 and str(tmp_path / "c.pth") in out


def test_demo_writes_a_page(capsys, tmp_path: Path) -> None:
    from medfoundry.samples import shared_data_dir

    code, _, _ = run(capsys, "demo", "--out", str(tmp_path / "demo"))
    page = (tmp_path / "demo" / "index.html").read_text()
    assert code == 0 and "ct-small" in page and "sam-vit-b" in page
    assert (tmp_path / "demo" / "ct-small.png").is_file()
    data = json.loads((tmp_path / "demo" / "demo.json").read_text())
    reports = {r["name"]: r for r in data["reports"]}
    assert set(reports) == {z["name"] for z in data["zero_shot"]} and "<h2>Reports</h2>" in page
    assert reports["ct-small"]["draft"].startswith("Modality in the file: CT.")
    for seg in data["segmentation"]:  # each measured mask is in its image's draft
        assert f"long axis {seg['long_axis_mm']:.1f}" in reports[seg["name"]]["draft"]
    # labels from the model's own modality label set; plane and region for the slices it calls CT or MR
    top = {z["name"]: max(z["kind"], key=z["kind"].get) for z in data["zero_shot"]}
    assert all(set(z["kind"]) == {"CT", "MR", "radiograph", "endoscopy"} for z in data["zero_shot"])
    assert all({"plane", "region"} <= set(z) for z in data["zero_shot"] if top[z["name"]] in ("CT", "MR"))
    assert top["ct-small"] == "CT"  # version 3; it still calls the two small MR samples CT (see its model card)
    if shared_data_dir() is not None:
        assert (top["cxr-dicom"], top["polyp"]) == ("radiograph", "endoscopy")
        assert top["ct-lesion"] == top["ct-series"] == top["ct-nifti"] == "CT"
    # a CXR finding only where the header does not say CT/MR, and notes only for those
    assert "finding" not in next(z for z in data["zero_shot"] if z["name"] == "mr-small")
    assert all("finding" in next(z for z in data["zero_shot"] if z["name"] == r["name"])
               for r in data["reports"] if "retrieved" in r)
    if shared_data_dir() is not None:  # the CR radiograph gets a note from the COVID collection's training notes
        assert reports["cxr-dicom"]["retrieved"] and 0 < reports["cxr-dicom"]["similarity"] <= 1
    assert run(capsys, "demo", "--out", str(tmp_path / "demo"))[0] == 2  # exists: refused without --overwrite


def test_import_has_no_heavy_side_effects() -> None:
    code = ("import sys, medfoundry; medfoundry.list_models; "
            "print(any(m in sys.modules for m in ('torch', 'pydicom', 'huggingface_hub')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_console_script_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "medfoundry.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "medfoundry" in out.stdout


def test_segment_by_text(capsys, tmp_path: Path) -> None:
    from PIL import Image

    arr = np.zeros((96, 96, 3), np.uint8)
    arr[30:70, 20:60] = (230, 120, 110)
    Image.fromarray(arr).save(tmp_path / "img.png")
    code = main(["segment", str(tmp_path / "img.png"), "--text", "a colon polyp", "--out", str(tmp_path / "m.png"),
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["box_xyxy"]) == 4 and (tmp_path / "m.png").is_file()
    assert main(["segment", str(tmp_path / "img.png"), "--text", "x", "--box", "1,1,5,5", "--out",
                 str(tmp_path / "n.png")]) == 2


def test_segment_fast_prompts_agrees_with_the_default(capsys, tmp_path: Path) -> None:
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 60, (120, 140, 3), dtype=np.uint8)
    arr[30:90, 40:110] = (230, 120, 110)
    Image.fromarray(arr).save(tmp_path / "img.png")
    runs = (("a.png", []), ("b.png", ["--fast-prompts"]), ("c.png", ["--fast-prompts", "--embed-pool", "2"]),
            ("e.png", ["--fast-prompts", "--tta", "embedding"]), ("f.png", ["--tta"]))
    for name, extra in runs:
        assert main(["segment", str(tmp_path / "img.png"), "--box", "35,25,115,95", "--out", str(tmp_path / name),
                     *extra]) == 0
    a, b, c, e, f = (np.asarray(Image.open(tmp_path / n)) > 0 for n in ("a.png", "b.png", "c.png", "e.png", "f.png"))
    assert a.any() and (a & b).sum() / (a | b).sum() > 0.95  # same grid, bfloat16 decoder
    assert (a & c).sum() / (a | c).sum() > 0.8  # coarser grid
    for mirrored in (e, f):  # test-time mirroring (embedding / logits)
        assert (a & mirrored).sum() / (a | mirrored).sum() > 0.9
    assert main(["segment", str(tmp_path / "img.png"), "--box", "35,25,115,95", "--out", str(tmp_path / "d.png"),
                 "--onnx", str(tmp_path), "--fast-prompts"]) == 2  # ONNX runs as exported
    assert not (tmp_path / "d.png").exists()


def test_report_from_a_text_bank(capsys, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "reports.csv").write_text("text\nNo acute cardiopulmonary process.\n"
                                          "Large right pleural effusion. Mild cardiomegaly.\n")
    Image.fromarray(np.full((64, 64), 120, dtype=np.uint8)).save(tmp_path / "cxr.png")
    bank = tmp_path / "bank.npz"
    assert main(["index", "build", "--texts", str(tmp_path / "reports.csv"), "--sentences", "--index", str(bank)]) == 0
    assert main(["report", str(tmp_path / "cxr.png"), "--bank", str(bank), "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the index build line
    sentences = {"No acute cardiopulmonary process.", "Large right pleural effusion.", "Mild cardiomegaly."}
    assert len(out["sources"]) == 2 and {s["text"] for s in out["sources"]} <= sentences
    assert out["report"] == " ".join(s["text"] for s in out["sources"])
    assert main(["report", str(tmp_path / "cxr.png"), "--bank", str(tmp_path / "none.npz")]) == 2
    assert main(["report", str(tmp_path / "cxr.png"), "--bank", str(bank), "-k", "0"]) == 2
    assert main(["index", "build", "--index", str(tmp_path / "x.npz")]) == 2  # neither folder nor texts
