"""3D propagation: the intensity gate, stop reasons, and bad input (boxes outside the volume, a key slice
without an object, one-slice volumes) — typed errors before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundry.errors import InputContractError
from medfoundry.io import MedImage
from medfoundry.predict.segment import SegmentResult
from medfoundry.tasks.volume import gate_mask, half_ellipsoids, intensity_range, segment_volume


class _EmptySegmenter:
    """Finds nothing anywhere (a model that sees no object in the box): only the calls segment_volume makes."""

    can_propagate = False

    def set_image(self, image: MedImage) -> None:
        self.shape = image.spatial_shape

    def predict(self, boxes=None, points=None, point_labels=None) -> SegmentResult:
        n = 1 if boxes is None else len(boxes)
        return SegmentResult(np.zeros((n, 1, *self.shape), bool), np.zeros((n, 1)), np.zeros((n, 1, 4, 4)))


class _CylinderSegmenter(_EmptySegmenter):
    """Finds the same disc (radius 10 px about (32, 32)) on every slice: an object that never ends."""

    def predict(self, boxes=None, points=None, point_labels=None) -> SegmentResult:
        n = 1 if boxes is None else len(boxes)
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 100
        masks = np.broadcast_to(disc, (n, 1, *self.shape)).copy()
        return SegmentResult(masks, np.ones((n, 1)), np.zeros((n, 1, 4, 4)))


def _ball_volume(depth: int = 9) -> tuple[MedImage, np.ndarray]:
    zz, yy, xx = np.mgrid[0:depth, 0:64, 0:64]
    ball = ((zz - depth // 2) / max(depth / 2.5, 1)) ** 2 + ((yy - 32) / 14) ** 2 + ((xx - 30) / 12) ** 2 <= 1
    noise = np.random.default_rng(0).integers(-6, 6, ball.shape)
    ct = (np.where(ball, 40, -80) + noise).astype(np.int16)
    return MedImage(array=ct, spacing=(3.0, 1.0, 1.0), units="HU", modality="CT"), ball


def test_gate_keeps_the_object_range_its_largest_part_and_fills_holes() -> None:
    values = np.zeros((20, 20))
    values[4:14, 4:14] = 50.0
    values[8, 8] = 300.0  # calcification inside: a hole that is filled back
    values[15:18, 15:18] = 50.0  # a separate island of the same tissue
    mask = np.zeros((20, 20), bool)
    mask[2:18, 2:18] = True  # a box-filling mask over the object, its surroundings and the island
    span = intensity_range(values, mask & (values == 50), 5.0)
    assert span == (50.0, 50.0)
    gated = gate_mask(mask, values, span)
    expected = np.zeros((20, 20), bool)
    expected[4:14, 4:14] = True
    np.testing.assert_array_equal(gated, expected)
    np.testing.assert_array_equal(gate_mask(mask, values, None), mask)  # no span: only parts and holes


def test_empty_key_slice_gives_an_empty_result_that_says_why() -> None:
    image, _ = _ball_volume()
    result = segment_volume(_EmptySegmenter(), image, 4, box=np.array([18.0, 18.0, 43.0, 47.0]))
    assert not result.mask.any() and result.stopped == ("no object on the key slice",) * 2
    assert result.first == result.last == 4


def test_bad_prompts_and_options_are_refused() -> None:
    image, _ = _ball_volume()
    seg = _EmptySegmenter()
    with pytest.raises(InputContractError, match="outside"):
        segment_volume(seg, image, 4, box=np.array([10.0, 10.0, 80.0, 40.0]))  # beyond the 64-pixel slice
    with pytest.raises(InputContractError, match="outside"):
        segment_volume(seg, image, -1, box=np.array([10.0, 10.0, 40.0, 40.0]))
    with pytest.raises(InputContractError, match="intensity_quantile"):
        segment_volume(seg, image, 4, box=np.array([10.0, 10.0, 40.0, 40.0]), intensity_quantile=60)


def test_real_model_one_slice_volume_and_stop_reasons() -> None:
    from medfoundry.predict.segment import open_segmenter

    seg = open_segmenter("medfoundry-sam-lite")
    image, ball = _ball_volume(depth=1)
    result = segment_volume(seg, image, 0, box=np.array([17.0, 17.0, 44.0, 48.0]))
    assert result.mask.shape == (1, 64, 64) and result.stopped == ("volume end", "volume end")
    assert 2 * (result.mask & ball).sum() / (result.mask.sum() + ball.sum()) > 0.8
    image, ball = _ball_volume(depth=11)
    result = segment_volume(seg, image, 5, box=np.array([17.0, 17.0, 44.0, 48.0]))
    truth_z = np.nonzero(ball.any(axis=(1, 2)))[0]
    assert result.first >= truth_z[0] - 1 and result.last <= truth_z[-1] + 1  # stops where the ball ends
    assert all(reason for reason in result.stopped)
    assert 2 * (result.mask & ball).sum() / (result.mask.sum() + ball.sum()) > 0.8


def test_cli_propagation_with_a_box_outside_writes_nothing(tmp_path: Path) -> None:
    from medfoundry.cli.main import main
    from medfoundry.io import write_image

    image, _ = _ball_volume()
    write_image(image, tmp_path / "ct.nii.gz")
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(tmp_path / "ct.nii.gz"), "--slice", "4", "--propagate", "--box", "10,10,90,40",
                 "--out", str(out)])
    assert code != 0 and not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "ct.nii.gz"]


def test_half_ellipsoids_shrink_to_nothing_past_the_range() -> None:
    blob = half_ellipsoids((9, 40, 40), 3, np.array([10.0, 10.0, 30.0, 20.0]), 1, 7)
    areas = blob.sum(axis=(1, 2))
    assert areas[0] == 0 and areas[8] == 0 and areas[3] == areas.max()  # nothing outside 1..7, widest at key
    assert list(areas[3:8]) == sorted(areas[3:8], reverse=True) and areas[1] > 0 and areas[7] > 0
    ys, xs = np.nonzero(blob[3])
    assert xs.min() >= 10 and xs.max() < 30 and ys.min() >= 10 and ys.max() < 20  # inside the key box
    wider = half_ellipsoids((9, 40, 40), 3, np.array([10.0, 10.0, 30.0, 20.0]), 1, 7, scale=1.5)
    assert wider[3].sum() > blob[3].sum() and (wider | blob).sum() == wider.sum()


def test_shape_priors_stop_an_endless_object_and_cut_it_to_a_blob() -> None:
    ct = (40 + np.random.default_rng(0).integers(-6, 6, (31, 64, 64))).astype(np.int16)  # 3-mm slices, 1-mm px
    image = MedImage(array=ct, spacing=(3.0, 1.0, 1.0), units="HU", modality="CT")
    box = np.array([22.0, 22.0, 43.0, 43.0])
    free = segment_volume(_CylinderSegmenter(), image, 15, box=box, intensity_quantile=None, max_extent=None,
                          ellipsoid_scale=None)
    assert (free.first, free.last) == (0, 30) and free.stopped == ("volume end", "volume end")
    prior = segment_volume(_CylinderSegmenter(), image, 15, box=box, intensity_quantile=None, max_extent=1.5,
                           ellipsoid_scale=None)
    reach = int(1.5 * np.sqrt(prior.mask[15].sum() / np.pi) / 3.0)  # 1.5 equivalent radii, in 3-mm slices
    assert (prior.first, prior.last) == (15 - reach, 15 + reach) and prior.stopped == ("extent prior",) * 2
    blob = segment_volume(_CylinderSegmenter(), image, 15, box=box, intensity_quantile=None, max_extent=1.5,
                          ellipsoid_scale=1.0)
    areas = blob.mask.sum(axis=(1, 2))
    assert areas[15] == areas.max() and areas[blob.first] < areas[15] / 2 and areas[blob.last] < areas[15] / 2
    assert not (blob.mask & ~prior.mask).any()
    with pytest.raises(InputContractError, match="positive"):
        segment_volume(_CylinderSegmenter(), image, 15, box=box, ellipsoid_scale=0)
