"""The segmentation flow, written once: read → prompt → predict → 2D/3D mask → measurements → write.

``medfoundry segment``, the demo, the evaluation harness (``segmentation-2d``/``-3d``) and the web app call
:func:`segment` (and :func:`segment_file` / :func:`write_mask` where they read and write files), so a prompt
means the same everywhere:

- a 2D image, or one slice of a volume (``slice_index``): the boxes and points are decoded together and the
  mask is the union of the best mask of each box;
- a volume with ``propagate``: the object is followed from the prompted slice through the volume
  (:func:`medfoundry.tasks.volume.segment_volume`; ``use_head`` carries it with the model's propagation head);
  segmenters with their own 3D inference (a ``segment_3d`` method: MedSAM2's video predictor, SAM-Med3D, box3d)
  run that instead, and those that only segment volumes (``volume_only``) need a volume and ``propagate``. The
  default segmenter (:mod:`medfoundry.predict.default_segmenter`) picks its 3D model for one box and its 2D
  model's propagation for every other prompt.

Coordinates are image pixels of the prompted plane: boxes XYXY, points (x, y[, label]) with label 1 inside
(default) and 0 outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.predict.segment import PromptSegmenter
from medfoundry.tasks.measure import Measurement, measure
from medfoundry.tasks.volume import VolumeResult, segment_volume


@dataclass
class SegmentationOutcome:
    """What one prompted segmentation produced.

    ``mask``: (H, W) bool, or (Z, H, W) for a propagated volume; ``image``: the image the mask lives on (the
    volume for 3D, the 2D image or the prompted slice otherwise); ``plane``: the prompted 2D plane;
    ``measurement``: sizes in mm (or pixels without spacing) and intensity statistics; ``volume``: the
    propagation's slice range and stop reasons (3D only); ``model``: the registry name of the model that made the
    mask (the default segmenter answers 3D box prompts with its 3D model).
    """

    mask: np.ndarray
    image: MedImage
    plane: MedImage
    measurement: Measurement
    volume: VolumeResult | None = None
    model: str = ""


def split_points(points: Sequence[Sequence[float]] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``[[x, y(, label)], ...]`` → ((N, 2) float32 XY, (N,) int labels, 1 where none is given)."""
    if not points:
        return None, None
    if any(len(p) not in (2, 3) for p in points):
        raise InputContractError("points are [x, y] or [x, y, label]")
    return (np.array([p[:2] for p in points], dtype=np.float32),
            np.array([int(p[2]) if len(p) > 2 else 1 for p in points], dtype=np.int64))


def segment(segmenter: PromptSegmenter, image: MedImage, boxes: Any = None,
            points: Sequence[Sequence[float]] | None = None, slice_index: int | None = None,
            propagate: bool = False, use_head: bool = False, progress: bool = False) -> SegmentationOutcome:
    """Prompt, predict and measure one object (see the module docstring).

    Args:
        boxes: (B, 4) XYXY in the plane's pixels (a list or array; one box with ``propagate``).
        points: ``[[x, y(, label)], ...]`` in the plane's pixels.
        slice_index: the prompted slice of a volume (required for volumes).
        propagate: follow the object through the volume (3D mask).
        use_head: with ``propagate``, carry the mask with the model's propagation head.
        progress: show a progress bar while propagating.
    Raises:
        InputContractError: a volume without ``slice_index``, ``propagate`` on a 2D image or with several boxes,
            and every prompt problem the segmenter finds.
    """
    box_array = None if boxes is None or len(boxes) == 0 else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    pts, labels = split_points(points)
    volume = None
    if getattr(segmenter, "volume_only", False) and not (image.is_volume and propagate):
        raise InputContractError(f"{segmenter.record.name} segments whole volumes: give a volume, the prompted "
                                 "slice (--slice K) and --propagate")
    if image.is_volume:
        if slice_index is None:
            raise InputContractError(f"{image.source or 'the image'} is a volume of {image.array.shape[0]} slices: "
                                     "choose the prompted slice (--slice K)")
        plane = image.slice(slice_index)
        if propagate:
            if box_array is not None and len(box_array) > 1:
                raise InputContractError("3D propagation follows one object: give one box")
            chooser = getattr(segmenter, "volume_segmenter", None)  # the default: box3d or the 2D model
            if chooser is not None:
                segmenter = chooser(image, box_array, pts, use_head)
            name = segmenter.record.name
            native = getattr(segmenter, "segment_3d", None)  # models with their own 3D inference (MedSAM2, SAM-Med3D)
            if native is not None:
                if use_head:
                    raise InputContractError(f"{segmenter.record.name} has no propagation head: it segments "
                                             "volumes with its own 3D inference")
                mask = native(image, slice_index, None if box_array is None else box_array[0], pts, labels)
                zs = np.nonzero(mask.any(axis=(1, 2)))[0]
                volume = VolumeResult(mask, int(zs[0]) if len(zs) else slice_index,
                                      int(zs[-1]) if len(zs) else slice_index, ("model", "model"))
                return SegmentationOutcome(mask, image, plane, measure(mask, image), volume, name)
            volume = segment_volume(segmenter, image, slice_index, box=None if box_array is None else box_array[0],
                                    points=pts, point_labels=labels, use_head=use_head, progress=progress)
            return SegmentationOutcome(volume.mask, image, plane, measure(volume.mask, image), volume, name)
    elif propagate:
        raise InputContractError("propagation needs a volume (a 3D image)")
    else:
        plane = image
    segmenter.set_image(plane)
    mask = segmenter.predict(boxes=box_array, points=pts, point_labels=labels).best().any(axis=0)
    return SegmentationOutcome(mask, plane, plane, measure(mask, plane), model=segmenter.record.name)


def mask_image(mask: np.ndarray, like: MedImage) -> MedImage:
    """A mask as a :class:`MedImage` on ``like``'s grid (uint8, 0/1), for the writers."""
    return replace(like, array=mask.astype(np.uint8), photometric="MONOCHROME2", units="mask",
                   window=None, meta={"mask_of": like.source}, phi={})


def write_mask(outcome: SegmentationOutcome, out: str | Path, *, series: str | Path | None = None,
               label: str = "object", overwrite: bool = False) -> Path:
    """Write the mask by ``out``'s extension: ``.png`` (2D, 0/255), ``.dcm`` (DICOM SEG referencing the DICOM
    ``series`` folder it was made from; 3D masks), anything else through :func:`medfoundry.io.write_image`
    (``.nii.gz`` keeps the image geometry, ``.npy``)."""
    from medfoundry.io import write_image

    out = Path(out)
    if out.name.endswith(".dcm"):
        from medfoundry.io.dicom_seg import write_dicom_seg

        if outcome.mask.ndim != 3 or series is None or not Path(series).is_dir():
            raise InputContractError("DICOM SEG output (.dcm) needs a DICOM series (folder or dicomweb+ address) "
                                     "and --propagate")
        write_dicom_seg(outcome.mask, str(series), str(out), label=label, overwrite=overwrite)
    elif out.name.endswith(".png"):
        if outcome.mask.ndim == 3:
            raise InputContractError("a 3D mask cannot be a PNG: use .nii.gz")
        write_image(replace(mask_image(outcome.mask, outcome.image), array=outcome.mask.astype(np.uint8) * 255),
                    str(out), overwrite=overwrite)
    else:
        write_image(mask_image(outcome.mask, outcome.image), str(out), overwrite=overwrite)
    return out


def segment_file(segmenter: PromptSegmenter, path: str, boxes: Any = None,
                 points: Sequence[Sequence[float]] | None = None, slice_index: int | None = None,
                 propagate: bool = False, use_head: bool = False, out: str | Path | None = None,
                 label: str = "object", overwrite: bool = False, progress: bool = False
                 ) -> tuple[SegmentationOutcome, MedImage]:
    """The whole flow for one file (any format :func:`medfoundry.io.read_image` reads, DICOMweb addresses
    too): read, :func:`segment`, and with ``out`` :func:`write_mask`. Returns the outcome and the image read."""
    from medfoundry.io import read_image
    from medfoundry.io.dicomweb import is_dicomweb

    image = read_image(path)
    outcome = segment(segmenter, image, boxes, points, slice_index, propagate, use_head, progress)
    if out is not None:
        series = image.meta.get("series_folder") if is_dicomweb(path) else path
        write_mask(outcome, out, series=series, label=label, overwrite=overwrite)
    return outcome, image
