"""Sam2Segmenter: MedSAM2 on 2D images (the sam2 package's image predictor) and on volumes (its video
predictor, propagating a key-slice box through the slices), as MedSAM2's own inference scripts do.

2D: ``set_image`` gives ``SAM2ImagePredictor.set_image`` the image's uint8 display values as RGB (greyscale
through its window), so the package's own transform (resize to 512, ImageNet mean/std) applies; ``predict``
takes boxes XYXY and points XY in original pixels and returns a :class:`~medfoundry.predict.segment.SegmentResult`.

3D (``segment_volume``), the chain of MedSAM2's ``medsam2_infer_3D_CT.py``: the volume ``(Z, Y, X)`` clipped to
the window, min-max scaled over the clipped volume to 0..255 and truncated to uint8; each slice greyscale → RGB,
resized to 512 × 512 by Pillow (bicubic), /255, ImageNet mean/std; the box added on the key slice, propagated
forward, the state reset, the box added again and propagated backward; the union of the masks (logits > 0),
then its largest 26-connected component.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.io.window import Window
from medfoundry.predict.segment import SegmentResult
from medfoundry.registry.records import ModelRecord

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FRAMES_LOCK = threading.Lock()


def window_volume(array: np.ndarray, window: Window) -> np.ndarray:
    """MedSAM2's CT windowing: clip to ``window``, min-max over the clipped volume to 0..255, truncate to uint8."""
    clipped = np.clip(np.asarray(array, np.float64), window.low, window.high)
    lo, hi = float(clipped.min()), float(clipped.max())
    if hi <= lo:
        raise InputContractError(f"the volume is constant inside the window {window.low}..{window.high}")
    return np.asarray((clipped - lo) / (hi - lo) * 255.0).astype(np.uint8)  # truncation, as np.uint8(x)


def volume_frames(volume_u8: np.ndarray, size: int = 512) -> torch.Tensor:
    """``(D, H, W)`` uint8 slices → ``(D, 3, size, size)`` float32 frames: Pillow RGB resize (bicubic), /255,
    ImageNet mean/std."""
    from PIL import Image

    frames = np.stack([np.asarray(Image.fromarray(s).convert("RGB").resize((size, size))).transpose(2, 0, 1)
                       for s in volume_u8]).astype(np.float64) / 255.0
    out = torch.from_numpy(frames)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return ((out - mean) / std).float()


@contextmanager
def given_frames(frames: torch.Tensor, height: int, width: int) -> Iterator[None]:
    """Make the sam2 video predictor's ``init_state`` take these frames instead of reading a video folder (the
    package loads frames only from JPEG folders or MP4 files; MedSAM2's fork passes tensors the same way)."""
    import sam2.sam2_video_predictor as video

    original = video.load_video_frames
    with _FRAMES_LOCK:
        video.load_video_frames = lambda **_: (frames, height, width)
        try:
            yield
        finally:
            video.load_video_frames = original


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a 3D mask (skimage's ``label`` default connectivity)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def sam2_image_predictor(model: Any) -> Any:
    """The sam2 package's ``SAM2ImagePredictor`` for ``model``, with its backbone feature sizes following the
    model's image size (the package hard-codes 1024 px's; MedSAM2's fork computes them as here)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    hires = int(model.image_size) // 4
    predictor._bb_feat_sizes = [(hires // 2**k, hires // 2**k) for k in range(3)]
    return predictor


class Sam2Segmenter:
    """MedSAM2 (a sam2 ``SAM2VideoPredictor``) with its record."""

    def __init__(self, model: Any, record: ModelRecord, device: str = "cpu") -> None:
        self.model, self.record, self.device = model.eval().to(device), record, torch.device(device)
        self.image_predictor = sam2_image_predictor(self.model)
        self.image: MedImage | None = None
        self.precision = "fp32"
        self.precision_choice: Any = None  # the sam2 package runs in float32 here (no precision probe)

    can_propagate = False  # no propagation head: volumes run through segment_volume (memory attention)
    volume_only = False  # 2D images and slices run through the image predictor

    @torch.inference_mode()
    def set_image(self, image: MedImage) -> None:
        """Embed a 2D image (greyscale through its window, colour as it is)."""
        if image.is_volume:
            raise InputContractError("set_image takes one 2D image; use segment_volume for a volume, or "
                                     "image.slice(k)")
        display = image.to_display()
        rgb = np.repeat(display[..., None], 3, axis=-1) if display.ndim == 2 else display[..., :3]
        self.image_predictor.set_image(np.ascontiguousarray(rgb))
        self.image = image

    @torch.inference_mode()
    def predict(self, boxes: np.ndarray | None = None, points: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                multimask: bool = False) -> SegmentResult:
        """Masks for each box (``(B, 4)`` XYXY, original pixels) or for the points alone (``(N, 2)`` XY with
        ``point_labels`` 1/0): ``masks`` ``(B, K, H, W)``, ``iou`` ``(B, K)``, low-resolution ``logits``."""
        from medfoundry.predict.segment import check_prompts

        if self.image is None:
            raise InputContractError("call set_image() before predict()")
        h, w = self.image.spatial_shape[:2]
        points, point_labels, boxes = check_prompts((h, w), points, point_labels, boxes)
        if mask_input is not None:
            raise InputContractError(f"{self.record.name}: mask prompts are not supported here; use boxes or points")
        results = []
        for box in (boxes if boxes is not None else [None]):
            masks, iou, low = self.image_predictor.predict(point_coords=points, point_labels=point_labels,
                                                           box=box, multimask_output=multimask)
            results.append((masks.astype(bool), iou, low))
        return SegmentResult(np.stack([r[0] for r in results]), np.stack([r[1] for r in results]),
                             np.stack([r[2] for r in results]))

    @torch.inference_mode()
    def segment_volume(self, volume: MedImage, key_slice: int, box: np.ndarray,
                       window: Window | None = None) -> np.ndarray:
        """Propagate a box on ``key_slice`` (XYXY in that slice's pixels) through a volume ``(Z, Y, X)``;
        returns the ``(Z, Y, X)`` bool mask (window: the volume's default window unless given)."""
        if not volume.is_volume or volume.is_color or volume.array.shape[0] < 2:
            raise InputContractError(f"segment_volume takes a greyscale volume of at least 2 slices, got array "
                                     f"shape {volume.array.shape}")
        depth, height, width = volume.array.shape
        if not 0 <= int(key_slice) < depth:
            raise InputContractError(f"key slice {key_slice} is outside 0..{depth - 1}")
        _, _, boxes = check_box(box, height, width)
        frames = volume_frames(window_volume(volume.array, window or volume.default_window()),
                               int(self.model.image_size)).to(self.device)
        with given_frames(frames, height, width):
            state = self.model.init_state(video_path="<frames>")
        out = np.zeros((depth, height, width), bool)
        for reverse in (False, True):
            self.model.add_new_points_or_box(inference_state=state, frame_idx=int(key_slice), obj_id=1, box=boxes)
            for index, _, logits in self.model.propagate_in_video(state, reverse=reverse):
                out[index] |= (logits[0] > 0.0).cpu().numpy()[0]
            self.model.reset_state(state)
        return largest_component(out) if out.any() else out

    def segment_3d(self, volume: MedImage, key_slice: int, box: np.ndarray | None,
                   points: np.ndarray | None = None, point_labels: np.ndarray | None = None) -> np.ndarray:
        """The segmentation flow's 3D entry (``medfoundry segment VOLUME --slice K --box ... --propagate``):
        :meth:`segment_volume` from one box on ``key_slice``, as MedSAM2's ``medsam2_infer_3D_CT.py`` prompts it.

        Raises:
            InputContractError: no box, or points (MedSAM2's 3D inference is box-prompted; points are not
                offered rather than run untested).
        """
        if box is None or points is not None:
            raise InputContractError(f"{self.record.name}: 3D propagation starts from one box on the key slice "
                                     "(--slice K --box x0,y0,x1,y1), as MedSAM2's 3D inference; points are not "
                                     "supported there")
        return self.segment_volume(volume, key_slice, np.asarray(box, np.float32))


def check_box(box: np.ndarray, height: int, width: int) -> tuple[None, None, np.ndarray]:
    """One XYXY box inside an ``(height, width)`` slice, as float32 ``(4,)``."""
    from medfoundry.predict.segment import check_prompts

    _, _, boxes = check_prompts((height, width), None, None, np.asarray(box, np.float32).reshape(1, 4))
    assert boxes is not None
    return None, None, boxes[0]


def load_sam2_segmenter(record: ModelRecord, weights: Any, device: str = "cpu", **_: Any) -> Sam2Segmenter:
    """Build MedSAM2 from the record's ``arch_config`` (``config``, ``overrides``) and load ``weights``."""
    from medfoundry.models.medsam2 import BASE_CONFIG, MEDSAM2_OVERRIDES, load_medsam2

    config = record.arch_config
    model = load_medsam2(weights, str(config.get("config", BASE_CONFIG)),
                         tuple(config.get("overrides", MEDSAM2_OVERRIDES)), record.name)
    return Sam2Segmenter(model, record, device)
