"""MedImage.radiological(): display orientation without moving any voxel in the world."""

from __future__ import annotations

import numpy as np

from medfoundry.io import MedImage


def _world(image: MedImage, index: tuple[int, ...]) -> np.ndarray:
    full = ([0] * (3 - len(index)) + list(index)) if image.spatial_ndim == 2 else list(index)
    return (image.affine @ np.array([*full, 1.0]))[:3]


def test_a_ras_volume_becomes_lps_with_the_same_world_positions() -> None:
    ras = np.diag([-1.0, -1.0, 1.0])  # LPS directions of x→R, y→A, z→S (array axes z, y, x: columns reversed)
    image = MedImage(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), spacing=(3.0, 2.0, 1.0),
                     origin=(10.0, -5.0, 7.0), direction=ras[:, ::-1])
    assert image.orientation == "RAS"
    out = image.radiological()
    assert out.orientation == "LPS" and out.array.shape == image.array.shape
    for idx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        flipped = (idx[0], 4 - idx[1], 5 - idx[2])
        assert out.array[idx] == image.array[flipped]
        assert np.allclose(_world(out, idx), _world(image, flipped))


def test_superior_goes_up_on_a_coronal_slice_and_lps_stays() -> None:
    coronal = np.column_stack([[0, 0, 1.0], [1.0, 0, 0]])  # rows towards superior, columns towards left
    image = MedImage(np.arange(12, dtype=np.float32).reshape(3, 4), spacing=(1.0, 1.0), direction=coronal)
    out = image.radiological()
    assert np.allclose(out.array, image.array[::-1]) and out.direction[2, 0] < 0
    plain = MedImage(np.zeros((3, 4)), spacing=(1.0, 1.0))
    assert plain.radiological() is plain
