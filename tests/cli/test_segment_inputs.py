"""``medfoundry segment``: a bad prompts file is a typed error naming its line (no traceback), and sizes of an
image without pixel spacing are printed in pixels, never in mm² or mm."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.cli.segment import read_prompts
from medfoundry.errors import InputContractError
from medfoundry.io import MedImage
from medfoundry.tasks.measure import measure


@pytest.mark.parametrize(("line", "message"), [
    ('{"boxes": [[1, 2, 30, 40]]}', "line 2: 'image' (a path) is required"),
    ('{"image": "a.png", "boxes": [[1, 2, 30, 40]]', "line 2: not JSON"),
    ('["a.png"]', "line 2: each line must be a JSON object"),
    ('{"image": "a.png", "box": [1, 2, 3, 4]}', "line 2: unknown keys ['box']"),
    ('{"image": "a.png", "boxes": [1, 2, 3, 4]}', "line 2: 'boxes' must be a list of [x0, y0, x1, y1] numbers"),
])
def test_a_bad_prompts_line_is_named(tmp_path: Path, capsys, line: str, message: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"image": "ok.png", "boxes": [[1, 2, 30, 40]]}\n' + line + "\n")
    with pytest.raises(InputContractError, match=re.escape(message)):
        read_prompts(prompts)
    assert main(["segment", "--prompts", str(prompts), "--out-dir", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_good_prompts_file_reads_every_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    jobs = [{"image": "a.png", "boxes": [[1, 2, 30, 40]]}, {"image": "b.nii.gz", "points": [[3, 4, 1]], "slice": 2}]
    prompts.write_text("\n".join(json.dumps(j) for j in jobs) + "\n\n")
    assert read_prompts(prompts) == [{"boxes": [], "points": [], **j} for j in jobs]  # absent prompts are empty lists


def test_sizes_without_pixel_spacing_are_pixels(tmp_path: Path, capsys) -> None:
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:45] = True
    known = measure(mask, MedImage(array=np.zeros((40, 60)), spacing=(0.5, 0.5)))
    assert known.size_unit == "mm" and "100.0 mm²" in known.describe() and "long axis" in known.describe()
    unknown = measure(mask, MedImage(array=np.zeros((40, 60)), spacing=(1.0, 1.0),
                                     meta={"spacing_source": "default (1 mm; raster has no geometry)"}))
    text = unknown.describe()
    assert unknown.size_unit == "px" and unknown.to_dict()["size_unit"] == "px"
    assert "mm" not in text and "400 px" in text and "no pixel spacing" in text
    image = np.zeros((64, 64), np.uint8)
    image[20:44, 16:48] = 220
    Image.fromarray(image).save(tmp_path / "blob.png")  # a PNG carries no pixel spacing
    assert main(["segment", str(tmp_path / "blob.png"), "--box", "14,18,50,46", "--out",
                 str(tmp_path / "mask.png")]) == 0
    out = capsys.readouterr().out
    assert "px" in out and "mm" not in out
