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


# -- 3D propagation from a key slice (issue 12, bad input): typed errors, and no file when it fails ---------------
class _FakeSegmenter:
    """Finds nothing (``found=False``) or the same disc about (32, 32) on every slice: the calls the flow makes."""

    can_propagate = False
    precision_choice = None

    def __init__(self, found: bool) -> None:
        from medfoundry.registry import get_record

        self.found, self.record = found, get_record("medfoundry-sam-lite")

    def set_image(self, image: MedImage) -> None:
        self.shape = image.spatial_shape

    def predict(self, boxes=None, points=None, point_labels=None):
        from medfoundry.predict.segment import SegmentResult

        n = 1 if boxes is None else len(boxes)
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 100) & self.found
        return SegmentResult(np.broadcast_to(disc, (n, 1, *self.shape)).copy(), np.ones((n, 1)),
                             np.zeros((n, 1, 4, 4)))


def _ct(tmp_path: Path, depth: int) -> Path:
    from medfoundry.io import write_image

    volume = np.full((depth, 64, 64), -80, np.int16)
    volume[:, 22:43, 22:43] = 40
    write_image(MedImage(array=volume, spacing=(3.0, 1.0, 1.0), units="HU", modality="CT"), tmp_path / "ct.nii.gz")
    return tmp_path / "ct.nii.gz"


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch):
    from medfoundry.predict import segment as segment_module

    def use(found: bool) -> None:
        monkeypatch.setattr(segment_module, "open_segmenter", lambda *a, **k: _FakeSegmenter(found))

    return use


@pytest.mark.parametrize("out_name", ["mask.nii.gz", "mask.npy"])
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_key_slice_without_object_is_a_typed_error_and_writes_nothing(tmp_path: Path, capsys, fake_model,
                                                                      out_name: str, json_flag: list) -> None:
    fake_model(found=False)
    ct = _ct(tmp_path, 7)
    out = tmp_path / out_name
    code = main(["segment", str(ct), "--slice", "3", "--box", "18,18,46,46", "--propagate", "--out", str(out),
                 *json_flag])
    err = capsys.readouterr().err
    assert code == 2 and "no object on key slice 3" in err and "nothing written" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]


@pytest.mark.parametrize(("args", "message"), [
    (["--slice", "7", "--box", "18,18,46,46"], "outside a volume of 7 slices"),
    (["--slice", "-1", "--box", "18,18,46,46"], "outside the volume's 0..6"),
    (["--slice", "3", "--box=-5,18,46,46"], "reaches outside the 64×64 image"),
    (["--slice", "3", "--box", "18,18,46,70"], "reaches outside the 64×64 image"),
    (["--slice", "3", "--point", "80,20"], "outside the 64×64 image"),
    (["--slice", "3", "--box", "18,18,46,46", "--box", "1,1,9,9"], "one box"),
])
def test_prompts_outside_the_volume_are_typed_errors_and_write_nothing(tmp_path: Path, capsys, fake_model,
                                                                       args: list, message: str) -> None:
    fake_model(found=True)
    ct = _ct(tmp_path, 7)
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(ct), *args, "--propagate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_one_slice_volumes(tmp_path: Path, capsys, fake_model) -> None:
    """A one-slice volume propagates to nothing beyond its key slice (an honest one-slice mask); a 2D image with
    --propagate is a typed error and nothing is written."""
    from medfoundry.io import read_image

    fake_model(found=True)
    ct = _ct(tmp_path, 1)
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(ct), "--slice", "0", "--box", "18,18,46,46", "--propagate", "--out", str(out)]) == 0
    written = read_image(str(out))
    assert written.array.shape == (1, 64, 64) and written.array[0, 32, 32] and not written.array[0, 2, 2]
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(tmp_path / "slice.png")
    flat = tmp_path / "flat.png"
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "slice.png"), "--box", "18,18,46,46", "--propagate", "--out",
                 str(flat)]) == 2
    assert "propagation needs a volume" in capsys.readouterr().err and not flat.exists()
