"""Hostile files through the CLI: `info` and `convert` exit 0 or 2 (one line, no traceback) and `convert` leaves
no output file behind when it fails."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from medfoundry.cli.main import main
from medfoundry.io import fuzz

pytestmark = pytest.mark.filterwarnings("ignore")


def test_info_and_convert_on_mutated_files(tmp_path: Path, capsys) -> None:
    rng = random.Random(2021)
    corpus = fuzz.package_corpus()
    codes = []
    for k in range(25):
        source = rng.choice(corpus)
        case = tmp_path / f"{k}_{fuzz.mutated_name(source, rng)}"
        case.write_bytes(fuzz.MUTATIONS[rng.choice(sorted(fuzz.MUTATIONS))](source.read_bytes(), rng))
        out = tmp_path / f"out{k}.nii.gz"
        info, convert = main(["info", str(case), "--json"]), main(["convert", str(case), str(out)])
        assert info in (0, 2) and convert in (0, 2), case.name
        assert out.exists() == (convert == 0), case.name
        assert not list(tmp_path.glob(f"*out{k}*.tmp*")) and not list(tmp_path.glob(f".out{k}*"))
        codes.append(info)
        err = capsys.readouterr().err
        assert "Traceback" not in err
    assert 0 in codes and 2 in codes


def test_valid_prompts_file_still_segments(tmp_path: Path) -> None:
    import json

    from pydicom.data import get_testdata_file

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"image": get_testdata_file("CT_small.dcm"), "boxes": [[30, 30, 90, 90]]}) + "\n\n")
    assert main(["segment", "--prompts", str(prompts), "--out-dir", str(tmp_path / "masks")]) == 0
    assert (tmp_path / "masks" / "CT_small_mask.nii.gz").is_file()
    prompts.write_text('{"image": "a.png", "boxes": [[1, 2, 3]]}\n')
    assert main(["segment", "--prompts", str(prompts), "--out-dir", str(tmp_path / "masks")]) == 2
