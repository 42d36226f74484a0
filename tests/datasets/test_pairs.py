"""CT volumes become axial slices and square-pixel reformats for contrastive pairs."""

from __future__ import annotations

import numpy as np

from medfoundry.datasets.pairs import _trunk_region, volume_planes


def test_volume_planes_cover_three_planes_with_square_pixels() -> None:
    volume = np.zeros((10, 40, 50), dtype=np.int16)
    volume[0] = 100  # the most inferior slice: must end at the bottom of reformats
    planes = volume_planes(volume, (3.0, 1.0, 1.0), axial_step=4, reformats=2)
    kinds = [p for p, _, _ in planes]
    assert kinds == ["axial"] * 2 + ["coronal"] * 2 + ["sagittal"] * 2
    axial = [img for p, _, img in planes if p == "axial"]
    assert all(img.shape == (40, 50) for img in axial)
    coronal = next(img for p, _, img in planes if p == "coronal")
    sagittal = next(img for p, _, img in planes if p == "sagittal")
    assert coronal.shape == (30, 50) and sagittal.shape == (30, 40)  # 10 slices × 3 mm = 30 rows of 1 mm
    assert coronal[-1].mean() > 90 and coronal[0].mean() < 1  # superior end up


def test_trunk_region_follows_aerated_lung() -> None:
    body = np.full((64, 64), 40.0)
    assert _trunk_region(body) == "abdomen"
    body[10:40, 10:40] = -800.0
    assert _trunk_region(body) == "thorax"
