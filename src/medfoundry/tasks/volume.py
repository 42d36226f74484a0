"""3D promptable segmentation by propagation: prompt one key slice, then follow the object slice by slice.

Box propagation (the default, any box-prompted model: the embedded one, LiteMedSAM, SAM formats): each
neighbouring slice is prompted with the box of the mask on the slice before it, scaled about its centre by
each of ``box_scales`` (objects shrink away from the key slice, and a box-prompted model fills whatever box it
is given), and the mask with the highest predicted IoU is kept, inside the previous box.

Intensity gate (``intensity_quantile``, issue 12): a box-prompted model fills its box with whatever is in it —
on CT of limb sarcomas the neighbouring bone, fat or muscle — and the next slice's box grows with that mask.
Every mask, the key slice's too, therefore keeps only the pixels whose value lies within the 5–95th
percentiles of the key-slice mask (HU for CT), then its largest part with holes filled (necrosis or
calcification inside the lesion stay in it). The gate also makes the stop rules work: propagation stops when
the object vanishes (fewer than ``min_pixels``), when the mask suddenly grows (more than ``max_growth`` × the
previous area), or when the mean intensity inside the mask leaves the key slice's object distribution by more
than ``max_intensity_z`` standard deviations; :attr:`VolumeResult.stopped` says which rule ended each side.

How the defaults were chosen: the stop rules and scales on the DeepLesion volumes (the scales (0.75, 0.9, 1.0)
were the first set tried; 0.6–1.1 did worse); the gate on the tuning patients only — DeepLesion 000001/000002
and the ``tune`` part of ``sts_ct_sarcoma_3d`` (:func:`medfoundry.datasets.splits.sts_split`) — never on the
patients reported by the ``lesion-3d`` and ``sts-3d`` benchmarks. Replayed on recorded tuning trajectories
(benchmarks/tune_sts3d_gate.py, results/tune_sts3d_gate.json: 2 DeepLesion + 2 sarcoma patients, all that the
shared 2-core machine allowed) the gate raised mean 3D Dice from 0.814 to 0.842 (DeepLesion) and from 0.700 to
0.754 (sarcomas); 10th–90th percentiles, or the range of the central half of the box only, did better on the
two sarcomas and worse on the two DeepLesion volumes, and one box scale instead of three did worse on both.

Shape priors (issue 12, second round): lesions and tumours are blobs, and the no-model ellipsoid inscribed in
the true 3D box scores about as well as box propagation did, while a box-prompted model keeps finding
"something" past the lesion's end and fills loose boxes with neighbouring tissue of the same density. So
propagation also stops (``"extent prior"``) beyond ``max_extent`` × the key-slice object's equivalent radius
from the key slice, and (``min_fraction``) when the mask falls below a fraction of the key slice's area; and the
masks are kept within two half-ellipsoids joined on the key slice (:func:`half_ellipsoids`): in-plane the
ellipse inscribed in the key-slice box (scaled by ``ellipsoid_scale``), shrinking along z as an ellipsoid's
cross-section to the propagated slice range. The three values were chosen by replaying recorded
trajectories of the tuning patients only (benchmarks/record_propagation.py, benchmarks/tune_shape_prior.py,
results/tune_shape_prior.json); ``PREVIOUS_DEFAULTS`` turns them off.

Models with a trained propagation head (``medfoundry train sam-propagation``) can instead carry the mask with
that head (``use_head=True``): it sees the next slice around the previous mask, with that mask and its box as
prompts, and returns the object there — empty where it has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.progress import Progress
from scipy import ndimage as ndi

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.predict.boxes import mask_box
from medfoundry.predict.segment import PromptSegmenter, check_prompts

#: Shape-prior defaults (chosen on the tuning patients only: benchmarks/tune_shape_prior.py).
MAX_EXTENT = 2.0
ELLIPSOID_SCALE = 1.1
MIN_FRACTION = 0.1

#: The box propagation before the shape prior (issue 12, second round), for comparisons (benchmarks/seg_sts3d.py).
PREVIOUS_DEFAULTS: dict = {"max_extent": None, "ellipsoid_scale": None, "min_fraction": None}


@dataclass
class VolumeResult:
    """The (Z, Y, X) bool mask, the range of slices it covers, and why propagation stopped towards lower and
    higher slice indices (``"volume end"``, ``"object vanished"``, ``"mask grew"``, ``"intensity changed"``,
    ``"no object on the key slice"``)."""

    mask: np.ndarray
    first: int
    last: int
    stopped: tuple[str, str] = ("", "")


def shrunk_boxes(box: np.ndarray, scales: tuple[float, ...], shape: tuple[int, int]) -> np.ndarray:
    """(len(scales), 4) XYXY boxes: ``box`` scaled about its centre by each factor, clipped to the (H, W)
    image."""
    if not scales or min(scales) <= 0:
        raise InputContractError(f"box scales must be positive, got {scales}")
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2
    h, w = shape
    out = [np.clip(np.concatenate([centre - half * s, centre + half * s]), 0, [w, h, w, h]) for s in scales]
    return np.asarray(out, dtype=np.float32)


def intensity_range(values: np.ndarray, mask: np.ndarray, quantile: float) -> tuple[float, float]:
    """The ``quantile``–``100 - quantile`` percentile range of ``values`` (image units: HU for CT) inside the
    key slice's ``mask``."""
    lo, hi = np.percentile(values[mask].astype(np.float64), [quantile, 100 - quantile])
    return float(lo), float(hi)


def gate_mask(mask: np.ndarray, values: np.ndarray, span: tuple[float, float] | None) -> np.ndarray:
    """Keep the pixels of ``mask`` whose value lies in ``span`` (None: all), then its largest connected part with
    its holes filled (necrosis or calcification inside a lesion stays in it)."""
    if span is not None:
        mask = mask & (values >= span[0]) & (values <= span[1])
    if not mask.any():
        return mask
    labels, n = ndi.label(mask)
    if n > 1:
        mask = labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1
    return ndi.binary_fill_holes(mask)


def propagation_step(
    segmenter: PromptSegmenter, values: np.ndarray, prev: np.ndarray, box_scales: tuple[float, ...],
    span: tuple[float, float] | None,
) -> tuple[np.ndarray, float, np.ndarray]:
    """One slice of box propagation, on the slice already set on ``segmenter`` (its (H, W) pixel ``values``, HU
    for CT), from the (H, W) bool mask ``prev`` of the neighbouring slice: the box of ``prev`` scaled by each of
    ``box_scales``, the mask with the highest predicted IoU, cut to the box of ``prev``, then gated by ``span``
    (:func:`gate_mask`). Returns that (H, W) bool mask, the model's predicted IoU of it, and the mask before
    the gate."""
    box_prev = mask_box(prev)
    result = segmenter.predict(boxes=shrunk_boxes(box_prev, box_scales, values.shape))
    best = int(np.argmax(result.iou.max(axis=1)))
    mask = result.best()[best]
    x0, y0, x1, y1 = np.round(box_prev).astype(int)
    inside = np.zeros_like(mask)
    inside[y0:y1, x0:x1] = True
    raw = mask & inside
    return (gate_mask(raw, values, span) if span is not None else raw), float(result.iou[best].max()), raw


def half_ellipsoids(shape: tuple[int, int, int], key: int, box: np.ndarray, first: int, last: int,
                    scale: float = 1.0, pad: float = 0.5) -> np.ndarray:
    """(Z, Y, X) bool: two half-ellipsoids joined on slice ``key``, the blob a key-slice box and a slice range
    describe. In-plane: the ellipse inscribed in ``box`` (XYXY pixels of the key slice) scaled by ``scale``
    about its centre; along z its cross-section shrinks as an ellipsoid's, to nothing ``pad`` slices beyond
    ``first`` (towards lower indices) and ``last`` (towards higher ones)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    rx, ry = max((x1 - x0) / 2 * scale, 0.5), max((y1 - y0) / 2 * scale, 0.5)
    yy, xx = np.mgrid[: shape[1], : shape[2]] + 0.5
    q = ((xx - (x0 + x1) / 2) / rx) ** 2 + ((yy - (y0 + y1) / 2) / ry) ** 2
    out = np.zeros(shape, dtype=bool)
    for z in range(max(first, 0), min(last, shape[0] - 1) + 1):
        half = (last - key + pad) if z >= key else (key - first + pad)
        out[z] = q <= 1 - ((z - key) / half) ** 2
    return out


def segment_volume(
    segmenter: PromptSegmenter,
    volume: MedImage,
    key_slice: int,
    box: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    *,
    min_pixels: int = 8,
    min_fraction: float | None = MIN_FRACTION,
    max_growth: float = 1.6,
    max_intensity_z: float = 2.0,
    use_head: bool = False,
    box_scales: tuple[float, ...] = (0.75, 0.9, 1.0),
    intensity_quantile: float | None = 5.0,
    max_extent: float | None = MAX_EXTENT,
    ellipsoid_scale: float | None = ELLIPSOID_SCALE,
    progress: bool = False,
) -> VolumeResult:
    """Segment an object through ``volume`` from prompts on ``key_slice`` (box XYXY / points XY in that
    slice's pixels). Works with any :class:`PromptSegmenter` (it only sets slices and prompts boxes).

    Args:
        min_pixels: a slice mask smaller than this ends propagation in that direction.
        min_fraction: so does (also ``"object vanished"``) a slice mask smaller than this fraction of the key
            slice's (``None``: off).
        max_growth, max_intensity_z: the stopping rules of box propagation (the head stops by itself).
        use_head: carry the mask with the model's propagation head (it must have one) instead of boxes.
        box_scales: box propagation tries the previous box scaled by each factor about its centre (objects
            shrink away from the key slice, and a box-prompted model fills the box it is given) and keeps the
            mask with the highest predicted IoU. Each scale costs one more crop encoding per slice (about 60 ms
            on a 2-core CPU for the embedded model); ``(1.0,)`` is the single-box propagation of earlier versions.
        intensity_quantile: every mask (the key slice's too) keeps only pixels within the
            ``q``–``100 - q`` percentiles of the key-slice mask (:func:`intensity_range`; HU for CT),
            then its largest part with holes filled: box-prompted models fill their box with whatever lies in
            it (bone, fat, muscle beside a tumour) and the next box grows with it. ``None`` turns it off.
        max_extent: shape prior on the extent along z: propagation stops (``"extent prior"``) more than this
            many times the key-slice object's equivalent radius (of a disc of its area, in mm) away from the
            key slice (in mm, from the volume's spacing). ``None``: no limit.
        ellipsoid_scale: shape prior on the cross-sections: the masks are kept within
            :func:`half_ellipsoids` of the key-slice box (scaled by this) and the propagated slice range, i.e.
            within the blob that box and range describe. ``None``: masks as the model gives them.

    Raises:
        InputContractError: not a volume, key slice outside it, prompts outside the slice, or a head asked of a
            model without one. A key slice where the model finds nothing gives an empty mask with
            ``stopped == ("no object on the key slice",) * 2``.
    """
    if not volume.is_volume:
        raise InputContractError("segment_volume needs a 3D volume; use PromptSegmenter for 2D images")
    if volume.is_color:
        raise InputContractError("segment_volume needs a greyscale volume, not a colour image")
    depth = volume.array.shape[0]
    if not 0 <= key_slice < depth:
        raise InputContractError(f"key slice {key_slice} is outside the volume's 0..{depth - 1}")
    if use_head and not segmenter.can_propagate:
        raise InputContractError(f"{segmenter.record.name} has no propagation head: use box propagation")
    if intensity_quantile is not None and not 0 <= intensity_quantile < 50:
        raise InputContractError(f"intensity_quantile must be in [0, 50) percent, got {intensity_quantile}")
    if (max_extent is not None and max_extent <= 0) or (ellipsoid_scale is not None and ellipsoid_scale <= 0):
        raise InputContractError(f"max_extent and ellipsoid_scale must be positive, got {max_extent}, "
                                 f"{ellipsoid_scale}")
    # prompts are checked against the slice here, whatever the segmenter checks itself
    check_prompts(volume.spatial_shape[1:], points, point_labels, None if box is None else np.asarray(box)[None])
    out = np.zeros(volume.spatial_shape, dtype=bool)
    segmenter.set_image(volume.slice(key_slice))
    first = segmenter.predict(boxes=None if box is None else np.asarray(box)[None], points=points,
                              point_labels=point_labels).best()[0]
    span = None
    values = volume.array[key_slice]
    if first.any() and intensity_quantile is not None and not use_head:
        span = intensity_range(values, first, intensity_quantile)
        first = gate_mask(first, values, span)
    if first.sum() < min_pixels:
        return VolumeResult(out, key_slice, key_slice, ("no object on the key slice",) * 2)
    out[key_slice] = first
    ref = values[first].astype(np.float64)
    ref_mean, ref_std = ref.mean(), ref.std() + 1e-6
    dz, dy, dx = volume.spacing
    least = 0 if min_fraction is None or use_head else min_fraction * first.sum()
    reach = np.inf if max_extent is None or use_head else max_extent * np.sqrt(first.sum() * dy * dx / np.pi) / dz
    lo = hi = key_slice
    stopped = ["volume end", "volume end"]
    with Progress(disable=not progress) as bar:
        task = bar.add_task("propagating", total=depth - 1)
        for side, step in ((1, 1), (0, -1)):
            prev, z = first, key_slice + step
            while 0 <= z < depth:
                if abs(z - key_slice) > reach:
                    stopped[side] = "extent prior"
                    break
                segmenter.set_image(volume.slice(z))
                if use_head:
                    mask = segmenter.predict_next(prev).best()[0]
                else:
                    mask = propagation_step(segmenter, volume.array[z], prev, box_scales, span)[0]
                bar.advance(task)
                reason = ""
                if mask.sum() < max(min_pixels, least):
                    reason = "object vanished"
                elif not use_head and mask.sum() > max_growth * prev.sum():  # the head decides itself
                    reason = "mask grew"
                elif not use_head and abs(volume.array[z][mask].astype(np.float64).mean() - ref_mean) / ref_std \
                        > max_intensity_z:
                    reason = "intensity changed"
                if reason:
                    stopped[side] = reason
                    break
                out[z] = mask
                lo, hi = min(lo, z), max(hi, z)
                prev, z = mask, z + step
    if ellipsoid_scale is not None and not use_head:
        key_box = np.asarray(box, dtype=np.float64) if box is not None else mask_box(first)
        out &= half_ellipsoids(out.shape, key_slice, key_box, lo, hi, ellipsoid_scale, pad=1.0)
        out[key_slice] |= first & ~out.any()  # never empty: the key slice's mask stays if the cut removed all
        zs = np.nonzero(out.any(axis=(1, 2)))[0]
        lo, hi = int(zs[0]), int(zs[-1])
    return VolumeResult(out, lo, hi, (stopped[0], stopped[1]))
