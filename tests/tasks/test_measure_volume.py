"""Measurements against geometry worked out by hand; 3D propagation on a synthetic sphere and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from medfoundry.errors import InputContractError
from medfoundry.io import MedImage
from medfoundry.tasks.measure import diameters, measure


def test_rectangle_diameters_and_area() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:40, 20:60] = True  # 30 rows × 40 columns
    image = MedImage(array=np.full((100, 100), 50.0), spacing=(0.5, 0.25))  # dy, dx in mm
    m = measure(mask, image)
    assert m.area_mm2 == pytest.approx(30 * 40 * 0.5 * 0.25)
    # long axis: the diagonal of a 15 mm × 10 mm rectangle; short axis: its extent perpendicular to it
    assert m.long_axis_mm == pytest.approx(np.hypot(15, 10))
    assert m.short_axis_mm == pytest.approx(2 * 15 * 10 / np.hypot(15, 10))
    assert m.mean == 50.0 and m.std == 0.0


def test_disc_diameters_are_isotropic() -> None:
    yy, xx = np.mgrid[0:201, 0:201]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 50**2
    long_axis, short_axis = diameters(disc, (1.0, 1.0))
    assert long_axis == pytest.approx(101, abs=1.5) and short_axis == pytest.approx(101, abs=2.5)


def test_volume_in_millilitres() -> None:
    mask = np.zeros((10, 20, 20), bool)
    mask[2:6, 5:15, 5:15] = True
    image = MedImage(array=np.zeros((10, 20, 20)), spacing=(2.0, 0.5, 0.5), units="HU")
    m = measure(mask, image)
    assert m.volume_ml == pytest.approx(4 * 10 * 10 * 2.0 * 0.25 / 1000)
    assert m.key_slice in range(2, 6) and m.units == "HU"
    with pytest.raises(InputContractError, match="shape"):
        measure(mask[0], image)


def test_propagation_follows_a_sphere() -> None:
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.volume import segment_volume

    zz, yy, xx = np.mgrid[0:15, 0:96, 0:96]
    sphere = (zz - 7) ** 2 * 16 + (yy - 48) ** 2 + (xx - 48) ** 2 <= 20**2
    vol = np.where(sphere, 230, 15).astype(np.uint8) + np.random.default_rng(0).integers(0, 10, sphere.shape,
                                                                                       dtype=np.uint8)
    image = MedImage(array=vol, spacing=(4.0, 1.0, 1.0))
    seg = open_segmenter("medfoundry-sam-lite")
    result = segment_volume(seg, image, 7, box=np.array([28.0, 28.0, 69.0, 69.0]))
    dice = 2 * (result.mask & sphere).sum() / (result.mask.sum() + sphere.sum())
    assert dice > 0.8 and result.first <= 4 and result.last >= 10
    with pytest.raises(InputContractError, match="key slice"):
        segment_volume(seg, image, 99, box=np.array([28.0, 28.0, 69.0, 69.0]))
    with pytest.raises(InputContractError, match="3D"):
        segment_volume(seg, image.slice(3), 0, box=np.array([28.0, 28.0, 69.0, 69.0]))


def test_shrunk_box_hypotheses_keep_the_centre_and_stay_inside() -> None:
    from medfoundry.tasks.volume import shrunk_boxes

    boxes = shrunk_boxes(np.array([10.0, 20.0, 50.0, 40.0]), (0.5, 1.0, 2.0), (45, 60))
    np.testing.assert_allclose(boxes[0], [20.0, 25.0, 40.0, 35.0])
    np.testing.assert_allclose(boxes[1], [10.0, 20.0, 50.0, 40.0])
    np.testing.assert_allclose(boxes[2], [0.0, 10.0, 60.0, 45.0])  # clipped to the 60 × 45 image
    with pytest.raises(InputContractError, match="positive"):
        shrunk_boxes(np.array([10.0, 20.0, 50.0, 40.0]), (0.0,), (45, 60))
