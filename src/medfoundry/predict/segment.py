"""PromptSegmenter: SAM-family segmentation with points, boxes and masks, with a cached image embedding.

Coordinates are always in original image pixels: points are N×2 arrays of (X, Y), boxes are B×4 arrays of
XYXY. ``set_image`` computes the embedding once (cached in memory, and on disk when ``cache_dir`` is given,
keyed by image content and model); each ``predict`` then runs only the prompt encoder and mask decoder.

Models trained on box crops (``prompt_crop > 0``, medfoundry's lite models) embed the crop around each box
instead of the whole image; the crop's embedding is cached the same way, so further clicks inside the
same box are decoder-only too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.predict.backend import SegmentationBackend
from medfoundry.predict.boxes import box_in_window
from medfoundry.predict.preprocess import pixel_values, preprocess, preprocess_window
from medfoundry.registry.loading import LoadedWeights
from medfoundry.registry.records import ModelRecord

#: Largest image (in pixels) a segmenter accepts; larger inputs are refused rather than resampled silently.
DEFAULT_MAX_PIXELS = 64_000_000

#: Test-time augmentation modes: ``none``; ``embedding``: the image (or crop) is encoded as is and mirrored
#: left-right, the mirrored embedding is flipped back and the two are averaged, so each prompt still runs the
#: decoder once (twice the encoding, no extra cost per prompt); ``logits``: every prompt is decoded on both
#: embeddings and the mask logits are averaged (twice the encoding and twice the cost per prompt).
TTA_MODES = ("none", "embedding", "logits")


@dataclass
class SegmentResult:
    """Masks for B prompts: ``masks`` (B, K, H, W) bool at the original size, ``iou`` (B, K) predicted IoU,
    ``logits`` (B, K, h, w) low-resolution logits (feed one back as ``mask_input`` to refine)."""

    masks: np.ndarray
    iou: np.ndarray
    logits: np.ndarray

    def best(self) -> np.ndarray:
        """(B, H, W): for each prompt the mask with the highest predicted IoU."""
        idx = self.iou.argmax(axis=1)
        return self.masks[np.arange(len(idx)), idx]


def check_prompts(
    shape: tuple[int, int],
    points: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate prompts against an (H, W) image; return them as float32/int arrays.

    Raises InputContractError for: no prompt at all, points without one label each, labels other than 0/1,
    points outside the image, boxes that are not XYXY with x0 < x1 and y0 < y1 inside the image.
    """
    h, w = shape
    if points is None and boxes is None:
        raise InputContractError("give at least one prompt: a box (x0,y0,x1,y1) or a point (x,y,label)")
    if points is not None:
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        if labels is None or len(np.asarray(labels).reshape(-1)) != len(points):
            raise InputContractError(f"{len(points)} points need {len(points)} labels (1 foreground, 0 background)")
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if not np.isin(labels, (0, 1)).all():
            raise InputContractError(f"point labels must be 0 (background) or 1 (foreground), got {labels.tolist()}")
        if len(points) == 0:
            raise InputContractError("empty point list")
        if (points[:, 0] < 0).any() or (points[:, 0] > w).any() or (points[:, 1] < 0).any() or (
                points[:, 1] > h).any():
            raise InputContractError(f"points {points.tolist()} fall outside the {w}×{h} image")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            raise InputContractError("empty box list")
        for b in boxes:
            if not (b[0] < b[2] and b[1] < b[3]):
                raise InputContractError(f"box {b.tolist()} is empty or inverted: use x0,y0,x1,y1 with x0<x1, y0<y1")
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise InputContractError(f"box {b.tolist()} reaches outside the {w}×{h} image")
    return points, labels, boxes


def image_key(image: MedImage) -> str:
    """What the embedding of a 2D image depends on besides the model: the pixel values with their shape and
    dtype, and the intensity window, photometric interpretation and modality that turn them into display values."""
    array = np.ascontiguousarray(image.array)
    digest = hashlib.sha1(f"{array.shape}|{array.dtype.str}|{image.window}|{image.photometric}|"
                          f"{image.modality}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


class PromptSegmenter:
    """Holds one SAM-family model (any :class:`~medfoundry.predict.backend.SegmentationBackend`: PyTorch or
    ONNX runtime); ``set_image`` once, ``predict`` per prompt."""

    def __init__(self, model: SegmentationBackend, record: ModelRecord, device: str = "cpu",
                 cache_dir: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, cache_size: int = 16,
                 tta: str = "none") -> None:
        if tta not in TTA_MODES:
            raise InputContractError(f"unknown test-time augmentation {tta!r}: use one of {', '.join(TTA_MODES)}")
        if not isinstance(model, SegmentationBackend):
            raise InputContractError(f"{type(model).__name__} is not a segmentation backend (see "
                                     "medfoundry.predict.backend.SegmentationBackend)")
        self.model: SegmentationBackend = model.eval().to(device)
        self.record = record
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_pixels = max_pixels
        self.crop = float(model.config.prompt_crop)
        if tta == "logits" and self.crop <= 0:
            raise InputContractError(f"{record.name}: logits test-time augmentation applies to box-crop models; "
                                     "use tta='embedding'")
        self.tta = tta
        self.prepare_embeddings = True  # False: every prompt runs segment_anything's own decoder (reference)
        self._cache: OrderedDict[str, Any] = OrderedDict()  # embeddings (PreparedEmbedding for SamModel)
        self._recent: OrderedDict[str, Any] = OrderedDict()  # the last few used, which keep prepared parts
        self._cache_size = cache_size
        self.image: MedImage | None = None
        self.precision = "fp32"
        self.precision_choice: Any = None  # how open_segmenter chose the precision (precision.PrecisionChoice)
        self._hash = ""
        self._unit: np.ndarray | None = None
        self._info: Any = None  # the whole image's preprocessing info, for its cached embedding
        self.loaded_weights: LoadedWeights | None = None  # the weights file and its sha256 (set by the loader)
        self._weights_sha256: str | None = None

    def set_precision(self, precision: str) -> PromptSegmenter:
        """``fp32`` (default; ViT encoders use fused attention, equal to segment_anything's to ~1e-6) or
        ``bf16``: the image encoder runs in bfloat16 with fused attention (:mod:`medfoundry.models.sam_fast`);
        prompts are still decoded in float32. Measure the
        agreement with fp32 for your model (benchmarks/sam_vit_b_speed.py does for SAM ViT-B)."""
        if precision not in ("fp32", "bf16"):
            raise InputContractError(f"unknown precision {precision!r}: use fp32 or bf16")
        if precision == self.precision:
            return self
        if precision == "bf16":
            self.model.set_encoder_precision("bf16")
        else:
            raise InputContractError("a bf16 segmenter cannot go back to fp32: load the model again")
        self.precision = precision
        self._cache.clear()
        self._recent.clear()
        return self

    def set_decoder_precision(self, precision: str) -> PromptSegmenter:
        """Run the mask decoder(s) with fused attention (``fp32``: equal to segment_anything's to ~1e-5) or,
        with ``bf16``, also in bfloat16 — the cost of each further prompt roughly halves on CPUs with native
        bfloat16; measure the agreement for your model (benchmarks/seg_kvasir.py --decoder-precision)."""
        if precision not in ("fp32", "bf16"):
            raise InputContractError(f"unknown decoder precision {precision!r}: use fp32 or bf16")
        self.model.set_decoder_precision(precision)  # prepared parts follow the decoder's dtype
        return self

    # -- image -------------------------------------------------------------------------------------------
    def set_image(self, image: MedImage) -> None:
        """Take a 2D image (a volume must be sliced first); full-image models embed it now."""
        if image.is_volume:
            raise InputContractError("segmenters take 2D images: pass image.slice(k), or use segment_volume()")
        h, w = image.spatial_shape
        if h * w > self.max_pixels:
            raise InputContractError(f"image of {w}×{h} pixels exceeds the limit of {self.max_pixels} pixels")
        self.image = image
        self._hash = image_key(image)
        self._unit = None
        self._info = None
        if self.crop <= 0:
            self._embedding(None)

    def _embedding(self, window: np.ndarray | None, flip: bool = False) -> tuple[Any, Any]:
        """The (1, 256, g, g) embedding of the whole image or of a crop window (mirrored left-right with
        ``flip``), from cache when possible; for PyTorch SAM models a
        :class:`~medfoundry.models.sam_prepared.PreparedEmbedding`, so that further prompts on it skip the
        decoder's prompt-independent work. Also returns the whole image's preprocessing info (None for crops)."""
        pool = self.model.config.embed_pool
        mirror_avg = self.tta == "embedding"
        key = (f"{self.record.name}:{self._weights_id()}:{self.precision}:{pool}:{self._hash}:"
               f"{None if window is None else window.tolist()}:{flip}:{mirror_avg}")
        info = pixels = None
        if window is None:
            if self._info is None or key not in self._cache:
                pixels, self._info = preprocess(self._require_image(), self.record.preprocess)
            info = self._info
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._hot(key), info
        disk = self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pt" if self.cache_dir else None
        if disk is not None and disk.is_file():
            emb = torch.load(disk, map_location=self.device, weights_only=True)
        else:
            if pixels is None:
                assert window is not None  # the whole image's pixels were made above
                pixels = self._crop_pixels(window)
                pixels = pixels.flip(-1) if flip else pixels
            with torch.inference_mode():
                emb = self.model.embed(pixels[None].to(self.device))
                if mirror_avg:  # mirrored encoding, flipped back onto the image's grid, averaged in
                    emb = (emb + self.model.embed(pixels.flip(-1)[None].to(self.device)).flip(-1)) / 2
            if disk is not None:
                disk.parent.mkdir(parents=True, exist_ok=True)
                torch.save(emb.cpu(), disk)
        entry = self._cache[key] = self.model.prepare(emb) if self.prepare_embeddings else emb
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._hot(key, entry), info

    def _weights_id(self) -> str:
        """The weights in the embedding cache key. In memory the cache belongs to this one loaded model, so an
        empty string; on disk (``cache_dir``, shared by processes and models) the sha256 of the weights file
        loaded, or of the model's state dict when it was built in memory."""
        if self.cache_dir is None:
            return ""
        if self._weights_sha256 is None:
            if self.loaded_weights is not None:
                self._weights_sha256 = self.loaded_weights.sha256
            else:
                self._weights_sha256 = self.model.weights_sha256()
        return self._weights_sha256

    def _hot(self, key: str, entry: Any = None) -> Any:
        """The cached embedding under ``key``, marked as in use: only the few embeddings used last keep their
        prepared decoder parts (interactive prompts return to the same one or two crops), which bounds their
        memory whatever the cache size."""
        from medfoundry.models.sam_prepared import PreparedEmbedding

        entry = self._cache[key] if entry is None else entry
        self._recent[key] = entry
        self._recent.move_to_end(key)
        while len(self._recent) > 4:
            _, old = self._recent.popitem(last=False)
            if isinstance(old, PreparedEmbedding):
                old.release()
        return entry

    def _decode(self, embedding: Any, **prompts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The backend's decoder on a cached embedding; without prepared embeddings, segment_anything's own."""
        return self.model.decode(embedding, reference=not self.prepare_embeddings, **prompts)

    def _require_image(self) -> MedImage:
        if self.image is None:
            raise InputContractError("call set_image() before predict()")
        return self.image

    def _crop_pixels(self, window: np.ndarray) -> torch.Tensor:
        """Crop (window XYXY, ints) of the image as the model's input: :func:`preprocess_window`, the one
        function that also builds training samples (:func:`medfoundry.train.seg_data.training_sample`)."""
        if self._unit is None:
            self._unit = pixel_values(self._require_image(), self.record.preprocess)
        return preprocess_window(self._unit, window, self.record.preprocess)

    # -- prompts -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(
        self,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
    ) -> SegmentResult:
        """Segment the current image.

        Args:
            boxes: (B, 4) XYXY in original pixels; one mask set per box. With several boxes, ``points``
                apply to each.
            points: (N, 2) XY in original pixels; ``point_labels`` (N,) 1 = foreground, 0 = background.
            mask_input: (1, h, w) low-resolution logits from a previous result of the same prompt (refinement).
            multimask: return 3 candidate masks per prompt instead of 1.
        """
        if self.image is None:
            raise InputContractError("call set_image() before predict()")
        h, w = self.image.spatial_shape
        points, point_labels, boxes = check_prompts((h, w), points, point_labels, boxes)
        if self.crop > 0:
            return self._predict_crops(boxes, points, point_labels, mask_input, multimask)
        emb, info = self._embedding(None)
        sy, sx = info.scale
        oy, ox = info.offset
        n = 1 if boxes is None else len(boxes)
        pts = None
        if points is not None:
            coords = points * np.array([sx, sy], dtype=np.float32) + np.array([ox, oy], dtype=np.float32)
            pts = (torch.from_numpy(coords)[None].repeat(n, 1, 1).to(self.device),
                   torch.from_numpy(point_labels)[None].repeat(n, 1).to(self.device))
        bx = None
        if boxes is not None:
            bx = torch.from_numpy(boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
                                  + np.array([ox, oy, ox, oy], dtype=np.float32)).to(self.device)
        mi = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32)[None].repeat(n, 1, 1, 1)
        logits, iou = self._decode(emb, points=pts, boxes=bx, mask_input=mi, multimask=multimask)
        size = self.record.preprocess.image_size
        up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        up = up[..., : info.content[0], : info.content[1]] if self.record.preprocess.resize == "longest_pad" else up
        masks = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False) > 0
        return SegmentResult(masks.cpu().numpy(), iou.float().cpu().numpy(), logits.float().cpu().numpy())

    def _predict_crops(self, boxes, points, point_labels, mask_input, multimask) -> SegmentResult:
        from medfoundry.predict.boxes import crop_box

        h, w = self._require_image().spatial_shape
        if boxes is None:  # points only: a window around the clicks, at least a quarter of the image
            span = np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])
            centre, half = (span[:2] + span[2:]) / 2, np.maximum((span[2:] - span[:2]) / 2, [w / 8, h / 8])
            windows = [crop_box(np.concatenate([centre - half, centre + half]), self.crop, h, w)]
            prompt_boxes = [None]
        else:
            windows = [crop_box(b, self.crop, h, w) for b in boxes]
            prompt_boxes = list(boxes)
        size = self.record.preprocess.image_size
        all_masks, all_iou, all_logits = [], [], []
        for window, box in zip(windows, prompt_boxes, strict=True):
            emb, _ = self._embedding(window)
            x0, y0, x1, y1 = window
            s = np.array([size / (x1 - x0), size / (y1 - y0)], dtype=np.float32)
            origin = np.array([x0, y0], dtype=np.float32)
            bx = None if box is None else torch.from_numpy(box_in_window(box, window, size))[None].to(self.device)
            pts = None
            if points is not None:
                pts = (torch.from_numpy((points - origin) * s)[None].to(self.device),
                       torch.from_numpy(point_labels)[None].to(self.device))
            mi = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32)[None]
            logits, iou = self._decode(emb, points=pts, boxes=bx, mask_input=mi, multimask=multimask)
            if self.tta == "logits":  # average with the decoding of the left-right mirrored crop
                logits, iou = self._mirrored(window, logits, iou, bx, pts, mi, multimask, size)
            all_masks.append(_paste(logits, window, h, w))
            all_iou.append(iou[0].float().cpu().numpy())
            all_logits.append(logits[0].float().cpu().numpy())
        return SegmentResult(np.stack(all_masks), np.stack(all_iou), np.stack(all_logits))

    @property
    def can_propagate(self) -> bool:
        """Whether the model has a trained slice-propagation head (box-crop models only)."""
        return self.crop > 0 and self.model.can_propagate

    @torch.inference_mode()
    def predict_next(self, previous: np.ndarray) -> SegmentResult:
        """Carry an object onto the current image (the next slice of a volume) with the propagation head.

        Args:
            previous: (H, W) bool, the object's mask on the neighbouring slice, in this image's pixels.
        Returns:
            one mask (1, 1, H, W), empty when the head finds that the object has ended, with its IoU estimate.
        """
        from medfoundry.predict.boxes import crop_box, mask_box, previous_mask_prompt

        if not self.can_propagate:
            raise InputContractError(f"{self.record.name} has no propagation head: use predict() with the box")
        if self.image is None:
            raise InputContractError("call set_image() before predict_next()")
        h, w = self.image.spatial_shape
        previous = np.asarray(previous, dtype=bool)
        if previous.shape != (h, w):
            raise InputContractError(f"previous mask {previous.shape} does not match the image {(h, w)}")
        box = mask_box(previous)
        window = crop_box(box, self.crop, h, w)
        emb, _ = self._embedding(window)
        size = self.record.preprocess.image_size
        x0, y0, x1, y1 = window
        bx = torch.from_numpy(box_in_window(box, window, size))[None].to(self.device)
        mi = torch.from_numpy(previous_mask_prompt(previous[y0:y1, x0:x1], 4 * emb.shape[-1]))[None].to(self.device)
        logits, iou = self._decode(emb, boxes=bx, mask_input=mi, head="propagation")
        return SegmentResult(_paste(logits, window, h, w)[None], iou.float().cpu().numpy(),
                             logits.float().cpu().numpy())

    def _mirrored(self, window, logits, iou, bx, pts, mi, multimask, size):
        emb, _ = self._embedding(window, flip=True)
        fbx = None if bx is None else torch.stack([size - bx[:, 2], bx[:, 1], size - bx[:, 0], bx[:, 3]], 1)
        fpts = None if pts is None else (torch.stack([size - pts[0][..., 0], pts[0][..., 1]], -1), pts[1])
        fmi = None if mi is None else mi.flip(-1)
        flog, fiou = self._decode(emb, points=fpts, boxes=fbx, mask_input=fmi, multimask=multimask)
        return (logits + flog.flip(-1)) / 2, (iou + fiou) / 2


def _paste(logits: torch.Tensor, window: np.ndarray, h: int, w: int) -> np.ndarray:
    """Low-resolution logits (1, K, s, s) of a crop window → (K, h, w) bool masks on the whole image."""
    x0, y0, x1, y1 = window
    up = F.interpolate(logits, size=(int(y1 - y0), int(x1 - x0)), mode="bilinear", align_corners=False) > 0
    full = np.zeros((logits.shape[1], h, w), dtype=bool)
    full[:, y0:y1, x0:x1] = up[0].cpu().numpy()
    return full


def load_segmenter(record: ModelRecord, weights: Any, device: str = "cpu", **kwargs: Any) -> PromptSegmenter:
    """Build the model of ``record`` and attach the resolved ``weights`` (a file, folder or state dict)."""
    from medfoundry.errors import RegistryError, WeightsError
    from medfoundry.models.sam import build_sam
    from medfoundry.registry.loading import load_state_dict

    if record.arch == "sam2":  # MedSAM2: the sam2 package's predictors (medfoundry.predict.medsam2)
        from medfoundry.predict.medsam2 import load_sam2_segmenter

        return load_sam2_segmenter(record, weights, device)  # type: ignore[return-value]
    if record.arch == "sam_med3d":  # SAM-Med3D: medim's network, whole volumes (medfoundry.predict.sam_med3d)
        from medfoundry.predict.sam_med3d import load_sam_med3d_segmenter

        return load_sam_med3d_segmenter(record, weights, device)  # type: ignore[return-value]
    if record.arch == "box3d":  # a key-slice box to the 3D object in one pass (medfoundry.predict.box3d)
        from medfoundry.predict.box3d import load_box3d

        return load_box3d(record, weights, device)  # type: ignore[return-value]
    if record.arch != "sam":
        raise RegistryError(f"{record.name}: architecture {record.arch!r} is registered but medfoundry cannot run "
                            "it yet")
    from medfoundry.models.sam_formats import to_segment_anything

    model = build_sam(dict(record.arch_config))
    state = to_segment_anything(load_state_dict(weights))  # segment_anything, transformers or LiteMedSAM names
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{record.name}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    from medfoundry.models.sam_fast import accelerate_encoder

    accelerate_encoder(model.image_encoder)  # ViT blocks: fused attention, float32, same result to ~1e-6
    segmenter = PromptSegmenter(model.float(), record, device=device, **kwargs)
    segmenter.loaded_weights = LoadedWeights(weights)
    return segmenter


def open_segmenter(model: str, weights: Any = None, device: str = "cpu", onnx: str | Path | None = None,
                   precision: str = "fp32", embed_pool: int = 1, **kwargs: Any) -> PromptSegmenter:
    """Resolve ``--model``/``--weights`` through the registry and return a ready segmenter; with ``onnx`` (a
    folder from ``medfoundry models export-onnx``) the encoder and decoder run in onnxruntime.

    ``precision``: ``fp32``; ``bf16`` (falls back to float32 with a warning where bfloat16 is not native);
    ``auto``: whichever is faster here with masks that agree (:mod:`medfoundry.predict.precision`; probed once
    per machine and cached). The decision is kept in ``segmenter.precision_choice``.

    SAM-Med3D (``sam-med3d-turbo``, architecture ``sam_med3d``) gives its
    :class:`~medfoundry.predict.sam_med3d.SamMed3DSegmenter` (:func:`~medfoundry.predict.sam_med3d.open_sam_med3d`),
    which segments whole volumes from points: ``segmenter.segment(volume, points_zyx)``, or the flow
    :func:`medfoundry.tasks.segmentation.segment` with ``slice_index=K, points=[[x, y]], propagate=True`` (the CLI:
    ``medfoundry segment VOLUME --model sam-med3d-turbo --slice K --point x,y --propagate``). It runs in float32
    through its reference package: ``onnx``, ``precision`` other than fp32/auto, ``embed_pool`` and ``tta`` are
    refused (InputContractError) before any weights are looked for.
    """
    from medfoundry.registry.loading import fetch_weights, resolve_model

    if resolve_model(model, weights)[0].arch == "sam_med3d":
        refused = [name for name, used in (("onnx", onnx is not None), ("precision", precision not in ("fp32", "auto")),
                                           ("embed_pool", embed_pool != 1),
                                           *((k, k != "tta" or v != "none") for k, v in kwargs.items())) if used]
        if refused:
            raise InputContractError(f"{model} (SAM-Med3D) runs through its reference package in float32 on whole "
                                     f"volumes: {', '.join(refused)} do not apply")
        from medfoundry.predict.sam_med3d import open_sam_med3d

        return open_sam_med3d(model, weights, device)  # type: ignore[return-value]
    if onnx is not None:
        if precision not in ("fp32", "auto") or embed_pool != 1:
            raise InputContractError("--precision/--fast-prompts apply to PyTorch models; ONNX runs as exported")
        from medfoundry.export.onnx import OnnxSam
        from medfoundry.models.sam import SamConfig

        record, _ = resolve_model(model, weights)
        if record.arch != "sam":
            raise InputContractError(f"{record.name} ({record.arch}) has no ONNX export: ONNX runs SAM-format models")
        segmenter = PromptSegmenter(OnnxSam(onnx, SamConfig(**record.arch_config)), record, **kwargs)
        segmenter.loaded_weights = LoadedWeights(Path(onnx))
        return segmenter
    record, resolved = fetch_weights(model, weights)
    if record.arch == "box3d":  # one pass from a key-slice box to the 3D object (predict/box3d.py)
        from medfoundry.predict.box3d import load_box3d

        if precision == "bf16" or embed_pool != 1 or kwargs.get("tta", "none") != "none":
            raise InputContractError(f"{record.name} segments volumes in one float32 pass: --precision bf16, "
                                     "--embed-pool and --tta do not apply")
        return load_box3d(record, resolved, device)  # type: ignore[return-value]
    if "segmentation-2d" not in record.tasks:
        raise InputContractError(f"{record.name} is a {record.family} model, not a promptable segmenter")
    segmenter = load_segmenter(record, resolved, device, **kwargs)
    if precision != "fp32":
        from medfoundry.predict.precision import resolve_precision

        segmenter.precision_choice = resolve_precision(segmenter, precision)
        segmenter.set_precision(segmenter.precision_choice.precision)
    if embed_pool != 1:
        segmenter.model.set_embed_pool(embed_pool)
        segmenter._cache.clear()
    return segmenter
