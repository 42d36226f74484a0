"""The default segmenter: one box on a key slice of a volume goes to medfoundry-box3d-tiny; everything else (2D
images, slices, points, the propagation head, one-slice volumes) to medfoundry-sam-lite."""

from __future__ import annotations

import numpy as np
import pytest

from medfoundry.io.image import MedImage
from medfoundry.predict.default_segmenter import (
    DEFAULT_PLANAR_MODEL,
    DEFAULT_VOLUME_MODEL,
    open_default_segmenter,
    route,
)
from medfoundry.tasks.segmentation import segment


def _ball_volume(depth: int = 14) -> tuple[MedImage, np.ndarray]:
    """A 15 mm ball of soft tissue (45 HU) in fat-like surroundings, 3 mm slices: about 11 slices deep."""
    zz, yy, xx = np.mgrid[0:depth, 0:64, 0:64]
    ball = ((zz - depth // 2) * 3.0) ** 2 + ((yy - 32) * 0.8) ** 2 + ((xx - 30) * 0.8) ** 2 <= 15.0**2
    ct = np.where(ball, 45.0, 0.0) + np.where(((yy - 32) * 0.8) ** 2 + ((xx - 30) * 0.8) ** 2 <= 22**2, 0, -100.0)
    noisy = (ct + np.random.default_rng(0).normal(0, 8, ct.shape)).astype(np.float32)
    return MedImage(array=noisy, spacing=(3.0, 0.8, 0.8), units="HU", modality="CT"), ball


BOX = np.array([[11.0, 13.0, 50.0, 52.0]], np.float32)  # the ball's box on its central slice


@pytest.mark.parametrize(("box", "points", "use_head", "depth", "expected"), [
    (BOX, None, False, 14, "volume"),
    (BOX[0], None, False, 14, "volume"),
    (None, np.array([[30.0, 32.0]]), False, 14, "planar"),
    (BOX, np.array([[30.0, 32.0]]), False, 14, "planar"),
    (np.concatenate([BOX, BOX]), None, False, 14, "planar"),
    (BOX, None, True, 14, "planar"),
    (BOX, None, False, 1, "planar"),
])
def test_route(box, points, use_head, depth, expected) -> None:
    image, _ = _ball_volume(depth)
    assert route(image, box, points, use_head) == expected


@pytest.fixture(scope="module")
def default():
    return open_default_segmenter()


def test_one_box_in_3d_is_answered_by_box3d_and_the_rest_by_the_2d_model(default) -> None:
    from medfoundry.eval.baselines import dice

    image, ball = _ball_volume()
    assert default.record.name == DEFAULT_PLANAR_MODEL and default._volume is None  # 3D model loaded lazily
    boxed = segment(default, image, BOX, slice_index=7, propagate=True)
    assert boxed.model == DEFAULT_VOLUME_MODEL and boxed.volume is not None and dice(boxed.mask, ball) > 0.75
    # a point on the same volume: the 2D model's propagation (run in the CLI test below on a thinner volume)
    assert default.volume_segmenter(image, None, np.array([[30.0, 32.0]])) is default.planar
    flat = segment(default, image, BOX, slice_index=7)  # one slice, no propagation: 2D
    assert flat.model == DEFAULT_PLANAR_MODEL and flat.mask.ndim == 2
    # a one-slice volume cannot go to box3d: the 2D model answers, no error
    thin = MedImage(array=image.array[7:8], spacing=image.spacing, units="HU", modality="CT")
    assert segment(default, thin, BOX, slice_index=0, propagate=True).model == DEFAULT_PLANAR_MODEL


def test_cli_without_model_uses_box3d_for_one_box_and_the_2d_model_when_a_2d_option_is_asked(tmp_path,
                                                                                           capsys) -> None:
    import json

    from medfoundry.cli.main import main
    from medfoundry.io import write_image

    image, _ = _ball_volume()
    image.array = image.array[6:9]  # three slices keep the 2D model's propagation short
    vol = tmp_path / "ball.nii.gz"
    write_image(image, str(vol))
    box = ",".join(str(v) for v in BOX[0])
    assert main(["segment", str(vol), "--slice", "1", "--box", box, "--propagate", "--out",
                 str(tmp_path / "a.nii.gz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == DEFAULT_VOLUME_MODEL
    assert main(["segment", str(vol), "--slice", "1", "--box", box, "--propagate", "--precision", "fp32",
                 "--fast-prompts", "--out", str(tmp_path / "b.nii.gz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == DEFAULT_PLANAR_MODEL
