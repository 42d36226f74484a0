"""3D promptable segmentation by propagation: prompt one key slice, then follow the object slice by slice.

Box propagation (the default, any box-prompted model): each neighbouring slice is prompted with the box of
the mask on the slice before it, scaled about its centre by each of ``box_scales`` (objects shrink away from
the key slice, and a box-prompted model fills whatever box it is given), and the mask with the highest
predicted IoU is kept, inside the previous box. Propagation stops when the object vanishes (fewer than
``min_pixels``), when the mask suddenly grows (more than ``max_growth`` × the previous area: the prompt box is
being filled with something else), or when the mean intensity inside the mask leaves the key slice's object
distribution by more than ``max_intensity_z`` standard deviations. These rules were chosen on the four
DeepLesion volumes of the shared data, and the scales (0.75, 0.9, 1.0) were the first set tried there (a
wider set, 0.6–1.1, did worse); on the organ volumes they change little (benchmarks/results/eval).

Models with a trained propagation head (``medfoundry train sam-propagation``) can instead carry the mask with
that head (``use_head=True``): it sees the next slice around the previous mask, with that mask and its box as
prompts, and returns the object there — empty where it has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.progress import Progress

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import PromptSegmenter


@dataclass
class VolumeResult:
    """The (Z, Y, X) bool mask and the range of slices it covers."""

    mask: np.ndarray
    first: int
    last: int


def shrunk_boxes(box: np.ndarray, scales: tuple[float, ...], shape: tuple[int, int]) -> np.ndarray:
    """(len(scales), 4) XYXY boxes: ``box`` scaled about its centre by each factor, clipped to the (H, W)
    image."""
    if not scales or min(scales) <= 0:
        raise InputContractError(f"box scales must be positive, got {scales}")
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2
    h, w = shape
    out = [np.clip(np.concatenate([centre - half * s, centre + half * s]), 0, [w, h, w, h]) for s in scales]
    return np.asarray(out, dtype=np.float32)


def segment_volume(
    segmenter: PromptSegmenter,
    volume: MedImage,
    key_slice: int,
    box: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    *,
    min_pixels: int = 8,
    max_growth: float = 1.6,
    max_intensity_z: float = 2.0,
    use_head: bool = False,
    box_scales: tuple[float, ...] = (0.75, 0.9, 1.0),
    progress: bool = False,
) -> VolumeResult:
    """Segment an object through ``volume`` from prompts on ``key_slice`` (box XYXY / points XY in that
    slice's pixels).

    Args:
        min_pixels: a slice mask smaller than this ends propagation in that direction.
        max_growth, max_intensity_z: the stopping rules of box propagation (the head stops by itself).
        use_head: carry the mask with the model's propagation head (it must have one) instead of boxes.
        box_scales: box propagation tries the previous box scaled by each factor about its centre (objects
            shrink away from the key slice, and a box-prompted model fills the box it is given) and keeps the
            mask with the highest predicted IoU. Each scale costs one more crop encoding per slice (about 60 ms
            on a 2-core CPU for the embedded model); ``(1.0,)`` is the single-box propagation of earlier versions.
    """
    if not volume.is_volume:
        raise InputContractError("segment_volume needs a 3D volume; use PromptSegmenter for 2D images")
    depth = volume.array.shape[0]
    if not 0 <= key_slice < depth:
        raise InputContractError(f"key slice {key_slice} is outside the volume's 0..{depth - 1}")
    out = np.zeros(volume.spatial_shape, dtype=bool)
    segmenter.set_image(volume.slice(key_slice))
    first = segmenter.predict(boxes=None if box is None else np.asarray(box)[None], points=points,
                              point_labels=point_labels).best()[0]
    if not first.any():
        return VolumeResult(out, key_slice, key_slice)
    out[key_slice] = first
    values = volume.array[key_slice][first].astype(np.float64)
    ref_mean, ref_std = values.mean(), values.std() + 1e-6
    lo = hi = key_slice
    if use_head and not segmenter.can_propagate:
        raise InputContractError(f"{segmenter.record.name} has no propagation head: use box propagation")
    with Progress(disable=not progress) as bar:
        task = bar.add_task("propagating", total=depth - 1)
        for step in (1, -1):
            prev, z = first, key_slice + step
            while 0 <= z < depth:
                segmenter.set_image(volume.slice(z))
                if use_head:
                    mask = segmenter.predict_next(prev).best()[0]
                else:
                    box_prev = mask_box(prev)
                    candidates = shrunk_boxes(box_prev, box_scales, volume.spatial_shape[1:])
                    result = segmenter.predict(boxes=candidates)
                    mask = result.best()[int(np.argmax(result.iou[:, 0]))]
                    x0, y0, x1, y1 = np.round(box_prev).astype(int)
                    inside = np.zeros_like(mask)
                    inside[y0:y1, x0:x1] = True
                    mask &= inside
                bar.advance(task)
                if mask.sum() < min_pixels:
                    break
                if not use_head:  # the head decides itself where the object ends
                    if mask.sum() > max_growth * prev.sum():
                        break
                    if abs(volume.array[z][mask].astype(np.float64).mean() - ref_mean) / ref_std > max_intensity_z:
                        break
                out[z] = mask
                lo, hi = min(lo, z), max(hi, z)
                prev, z = mask, z + step
    return VolumeResult(out, lo, hi)
