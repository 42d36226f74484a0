"""No-model baselines that a prompt alone gives, and the plain Dice overlap used beside them."""

from __future__ import annotations

import numpy as np

from medfoundry.tasks.shapes import dice, ellipse_in_box, ellipsoid_from_key_box, ellipsoid_in_box

__all__ = ["dice", "ellipse_in_box", "ellipsoid_from_key_box", "ellipsoid_in_box", "pixel_features"]


def pixel_features(image, size: int = 32) -> np.ndarray:
    """(size·size,) raw grey pixels in [0, 1] of a 2D :class:`~medfoundry.io.MedImage` after its default window,
    resized with PIL (bilinear): the input of the no-model baselines for probes and retrieval."""
    from PIL import Image

    rgb = image.to_display()
    grey = Image.fromarray(rgb).convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32).ravel() / 255.0

