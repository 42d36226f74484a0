"""Text → mask: a contrastive model's grounding heatmap proposes a box, the promptable segmenter makes the mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfoundry.io.image import MedImage


@dataclass
class TextMaskResult:
    """The proposed box (XYXY, original pixels), the (H, W) upsampled similarity map and the mask."""

    box: np.ndarray
    heatmap: np.ndarray
    mask: np.ndarray


def propose_box(heat: np.ndarray, shape: tuple[int, int], level: float = 0.5) -> np.ndarray:
    """Box around the connected region holding the heatmap's peak, above ``level`` of its range."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    up = F.interpolate(torch.from_numpy(heat.astype(np.float32))[None, None], size=shape, mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    region = up >= lo + level * (hi - lo)
    labels, _ = ndimage.label(region)
    peak = np.unravel_index(up.argmax(), up.shape)
    ys, xs = np.nonzero(labels == labels[peak])
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32), up


def segment_by_text(clip, segmenter, image: MedImage, text: str, level: float = 0.5) -> TextMaskResult:
    """Segment what ``text`` describes in a 2D image (grounding → box → promptable segmentation)."""
    heat = clip.dense_similarity(image, text)
    box, up = propose_box(heat, image.spatial_shape, level)
    segmenter.set_image(image)
    mask = segmenter.predict(boxes=box[None]).best()[0]
    return TextMaskResult(box, up, mask)
