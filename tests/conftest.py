"""Shared fixtures: the shared data folder (tests that need it skip without it) and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfoundry.samples import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is not present on this machine")
    return root


@pytest.fixture(scope="session")
def agrees_with_sam_predictor():
    """check(segmenter, sam_modules, rgb, boxes, min_iou=0.99, require_mask=False): every box's mask from a medfoundry
    PromptSegmenter has IoU ≥ min_iou with segment_anything's SamPredictor built around ``sam_modules``
    (a model with image_encoder, prompt_encoder and mask_decoder)."""
    import numpy as np

    from medfoundry.io import MedImage

    def check(segmenter, sam_modules, rgb, boxes, min_iou: float = 0.99, require_mask: bool = False) -> None:
        from segment_anything import SamPredictor
        from segment_anything.modeling import Sam

        ref = SamPredictor(Sam(sam_modules.image_encoder, sam_modules.prompt_encoder, sam_modules.mask_decoder).eval())
        segmenter.set_image(MedImage(array=rgb, spacing=(1.0, 1.0), photometric="RGB"))
        ref.set_image(rgb)
        for box in np.asarray(boxes, dtype=np.float64):
            mine = segmenter.predict(boxes=box[None]).best()[0]
            theirs = ref.predict(box=box, multimask_output=False)[0][0]
            union = (mine | theirs).sum()
            assert union or not require_mask, f"box {box}: both masks empty"
            assert union == 0 or (mine & theirs).sum() / union >= min_iou, f"box {box}"

    return check
