"""The no-model shapes of box prompts."""

from __future__ import annotations

import numpy as np

from medfoundry.tasks.shapes import dice, ellipsoid_from_key_box, ellipsoid_in_box


def test_key_box_ellipsoid_recovers_a_sphere_on_an_anisotropic_grid_without_knowing_its_extent() -> None:
    spacing = (4.0, 1.0, 1.0)
    zz, yy, xx = np.meshgrid(np.arange(20) + 0.5, np.arange(60) + 0.5, np.arange(60) + 0.5, indexing="ij")
    sphere = ((zz - 10) * 4) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 <= 20**2
    key = int(sphere.sum((1, 2)).argmax())
    ys, xs = np.nonzero(sphere[key])
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    guess = ellipsoid_from_key_box(sphere.shape, spacing, key, box)
    assert dice(guess, sphere) > 0.9
    # an elongated object: the key box cannot know it, the true 3D box can
    long = ((zz - 10) * 4 / 2) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 <= 20**2
    assert dice(ellipsoid_from_key_box(long.shape, spacing, key, box), long) < dice(ellipsoid_in_box(long), long) - 0.1
