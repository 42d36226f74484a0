"""What the web app holds: uploaded images (by content hash, in a private folder) and one loaded predictor per
model, used under a lock (predictors keep per-image state, and the app serves requests from a thread pool).

No web framework here: :class:`Workbench` is plain Python, so the same calls back the HTTP routes, tests and
notebooks.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medfoundry.errors import ImageReadError, InputContractError, MedfoundryError
from medfoundry.io import read_image
from medfoundry.io.image import MedImage

# Suffixes medfoundry reads; anything else is stored without one and tried as DICOM.
SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".npz", ".zip")
ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")


class UploadTooLargeError(MedfoundryError):
    """An upload exceeds the configured size limit."""


class UnknownImageError(MedfoundryError):
    """No uploaded image has this id (never uploaded, malformed, or evicted)."""


@dataclass
class StoredImage:
    """An uploaded image: its id (content hash prefix), the original file name, the image."""

    id: str
    filename: str
    image: MedImage
    embedding: np.ndarray | None = None  # (D,) unit vector of the middle plane, filled by Workbench.similar

    def plane(self, slice_index: int | None) -> MedImage:
        """The 2D image to show or prompt: the given slice of a volume (default: the middle one)."""
        if not self.image.is_volume:
            if slice_index not in (None, 0):
                raise InputContractError(f"{self.filename} is a 2D image: it has no slice {slice_index}")
            return self.image
        depth = self.image.array.shape[0]
        k = depth // 2 if slice_index is None else slice_index
        if not 0 <= k < depth:
            raise InputContractError(f"slice {k} is outside the volume's 0..{depth - 1}")
        return self.image.slice(k)


def safe_suffix(filename: str) -> str:
    """The recognised suffix of an uploaded file name ('' if none); the name itself is never used as a path."""
    name = Path(filename or "").name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), "")


class Workbench:
    """Uploaded images and lazily loaded predictors for the web app.

    Args:
        store: folder for uploaded files (default: a new private temporary folder, removed by :meth:`close`).
        max_upload_bytes: larger uploads are refused (:class:`UploadTooLargeError`) before they are read.
        max_images: uploads kept in memory; the oldest is evicted first.
        contrastive_model, segmentation_model: registry names of the models used.
        chat_model: registry name (or ``local-dir:PATH``) of a conversational model for questions about an image
            (none by default: the published ones are large downloads); ``chat_weights`` overrides its weights.
        index: a retrieval index (``medfoundry index build``) to search for similar cases; without one,
            similar cases are searched among the uploads. Its texts, if any, are the report bank.
    """

    def __init__(self, store: str | Path | None = None, max_upload_bytes: int = 512 << 20, max_images: int = 32,
                 contrastive_model: str = "medfoundry-clip-tiny",
                 segmentation_model: str = "medfoundry-sam-lite", index: str | Path | None = None,
                 chat_model: str | None = None, chat_weights: str | None = None) -> None:
        self._own_store = store is None
        self.store = Path(store) if store is not None else Path(tempfile.mkdtemp(prefix="medfoundry-serve-"))
        self.store.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        self.max_images = max_images
        self.model_names = {"contrastive": contrastive_model, "segmentation": segmentation_model, "chat": chat_model}
        self.chat_weights = chat_weights
        self._images: OrderedDict[str, StoredImage] = OrderedDict()
        self._predictors: dict[str, Any] = {}
        self.lock = threading.RLock()
        self.index = None
        if index is not None:
            from medfoundry.tasks.retrieval import RetrievalIndex

            self.index = RetrievalIndex.load(index)
            if self.index.model != contrastive_model:
                raise InputContractError(f"{index} was built with {self.index.model}; the viewer embeds with "
                                         f"{contrastive_model} (choose it with --clip-model)")

    # -- images ------------------------------------------------------------------------------------------
    def add_upload(self, stream: BinaryIO, filename: str) -> StoredImage:
        """Copy an upload into the store (refusing it past the size limit), read it, and keep it."""
        suffix = safe_suffix(filename)
        digest = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=self.store, suffix=".part")
        tmp = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as fh:
                while chunk := stream.read(1 << 20):
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise UploadTooLargeError(f"upload larger than the limit of {self.max_upload_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
            if size == 0:
                raise ImageReadError(Path(filename or "upload").name, "the upload is empty")
            image_id = digest.hexdigest()[:24]
            path = self.store / f"{image_id}{suffix}"
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            image = read_image(path)
        except ImageReadError as exc:  # name the upload, not the server's file
            path.unlink(missing_ok=True)
            raise ImageReadError(Path(filename or "upload").name, exc.reason) from None
        except MedfoundryError:
            path.unlink(missing_ok=True)
            raise
        stored = StoredImage(image_id, Path(filename or "upload").name, image)
        with self.lock:
            self._images[image_id] = stored
            self._images.move_to_end(image_id)
            while len(self._images) > self.max_images:
                old, _ = self._images.popitem(last=False)
                for f in self.store.glob(f"{old}*"):
                    f.unlink(missing_ok=True)
        return stored

    def get(self, image_id: str) -> StoredImage:
        """The uploaded image with this id."""
        if not ID_PATTERN.match(image_id or "") or image_id not in self._images:
            raise UnknownImageError(f"no uploaded image has id {image_id!r}")
        return self._images[image_id]

    # -- predictors --------------------------------------------------------------------------------------
    def predictor(self, kind: str) -> Any:
        """The loaded predictor of ``kind`` (``contrastive``, ``segmentation`` or ``chat``), loaded on first use."""
        with self.lock:
            if kind not in self._predictors:
                if kind == "contrastive":
                    from medfoundry.predict.contrastive import open_contrastive

                    self._predictors[kind] = open_contrastive(self.model_names[kind])
                elif kind == "segmentation":
                    from medfoundry.predict.segment import open_segmenter

                    self._predictors[kind] = open_segmenter(self.model_names[kind])
                elif kind == "chat":
                    from medfoundry.predict.conversational import open_chat

                    if self.model_names["chat"] is None:
                        raise InputContractError("no conversational model: start the viewer with --chat-model NAME")
                    self._predictors[kind] = open_chat(self.model_names["chat"], self.chat_weights)
                else:
                    raise InputContractError(f"unknown predictor kind {kind!r}")
            return self._predictors[kind]

    def classify(self, image_id: str, labels: list[str], slice_index: int | None = None) -> dict[str, float]:
        """Zero-shot probabilities of ``labels`` for one image (or slice)."""
        from medfoundry.tasks.zero_shot import zero_shot_classify

        labels = [str(x).strip() for x in labels if str(x).strip()]
        if len(labels) < 2:
            raise InputContractError("give at least two labels to choose between")
        plane = self.get(image_id).plane(slice_index)
        with self.lock:
            result = zero_shot_classify(self.predictor("contrastive"), [plane], labels)
        return {label: float(p) for label, p in zip(result.labels, result.probs[0], strict=True)}

    def ground(self, image_id: str, text: str, slice_index: int | None = None) -> np.ndarray:
        """(H, W) similarity map of ``text`` over the image (grounding heatmap)."""
        if not text or not text.strip():
            raise InputContractError("give a text to ground")
        plane = self.get(image_id).plane(slice_index)
        with self.lock:
            return self.predictor("contrastive").dense_similarity(plane, text.strip())

    def similar(self, image_id: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` most similar cases (cosine of the contrastive embeddings of the middle planes): from the
        index when there is one, otherwise among the other uploads. Items are named by file name only."""
        if not 1 <= k <= 100:
            raise InputContractError(f"k must be between 1 and 100, got {k}")
        query = self._embedding(self.get(image_id))
        if self.index is not None:
            hits = self.index.search(query, k, kind="image")
            return [{"name": Path(h.item).name, "score": h.score, **{m: v for m, v in h.meta.items()
                                                                   if m in ("label", "text")}} for h in hits]
        others = [s for s in list(self._images.values()) if s.id != image_id]
        scored = sorted(((float(self._embedding(s) @ query), s) for s in others), key=lambda t: -t[0])[:k]
        return [{"name": s.filename, "id": s.id, "score": score} for score, s in scored]

    def report(self, image_id: str, k: int = 1, slice_index: int | None = None) -> dict[str, Any]:
        """A report by retrieval from the texts of the index (``medfoundry index build --texts``):
        ``{report, sources: [{text, similarity}]}``."""
        from medfoundry.tasks.report import generate_report

        if not 1 <= k <= 20:
            raise InputContractError(f"k must be between 1 and 20, got {k}")
        if self.index is None:  # an index without texts is refused by generate_report
            raise InputContractError("no report bank: start the viewer with --index built with "
                                     "`medfoundry index build --texts reports.csv`")
        plane = self.get(image_id).plane(slice_index)
        with self.lock:
            return generate_report(self.predictor("contrastive"), plane, self.index, k=k).as_dict()

    def ask(self, image_id: str, question: str, slice_index: int | None = None,
            max_new_tokens: int = 128) -> dict[str, Any]:
        """A conversational model's answer about the image (slice): ``{answer, model, new_tokens, seconds}``."""
        if not 1 <= max_new_tokens <= 1024:
            raise InputContractError(f"max_new_tokens must be between 1 and 1024, got {max_new_tokens}")
        plane = self.get(image_id).plane(slice_index)
        with self.lock:
            chat = self.predictor("chat")
            answer = chat.ask(plane, question, max_new_tokens=max_new_tokens)
        return {"answer": answer.text, "model": chat.record.name, "new_tokens": answer.new_tokens,
                "seconds": round(answer.seconds, 3)}

    def _embedding(self, stored: StoredImage) -> np.ndarray:
        with self.lock:
            if stored.embedding is None:
                stored.embedding = self.predictor("contrastive").embed_images([stored.plane(None)])[0]
            return stored.embedding

    def segment(self, image_id: str, box: list[float] | None, points: list[list[float]] | None = None,
                slice_index: int | None = None, propagate: bool = False) -> tuple[np.ndarray, MedImage, MedImage]:
        """Prompted mask: box XYXY and points (x, y[, label]) in the shown plane's pixels. Returns the mask
        (2D, or 3D with ``propagate`` on a volume), the image it lives on, and the plane that was prompted."""
        stored = self.get(image_id)
        plane = stored.plane(slice_index)
        boxes = None if box is None else np.asarray(box, dtype=np.float32).reshape(1, 4)
        pts = labels = None
        if points:
            if any(len(p) not in (2, 3) for p in points):
                raise InputContractError("points are [x, y] or [x, y, label]")
            pts = np.array([p[:2] for p in points], dtype=np.float32)
            labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in points])
        with self.lock:
            seg = self.predictor("segmentation")
            if propagate:
                if not stored.image.is_volume:
                    raise InputContractError("propagation needs a volume")
                from medfoundry.tasks.volume import segment_volume

                key = stored.image.array.shape[0] // 2 if slice_index is None else slice_index
                result = segment_volume(seg, stored.image, key, box=None if boxes is None else boxes[0], points=pts,
                                        point_labels=labels)
                return result.mask, stored.image, plane
            seg.set_image(plane)
            return seg.predict(boxes=boxes, points=pts, point_labels=labels).best()[0], plane, plane

    def close(self) -> None:
        """Forget the images and remove the store if this workbench created it."""
        self._images.clear()
        if self._own_store:
            shutil.rmtree(self.store, ignore_errors=True)
