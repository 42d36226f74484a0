"""What the web app holds: an :class:`~medfoundry.serve.store.ImageStore` of uploads and one loaded predictor
per model kind, each used under its own lock, so a long chat answer never blocks a segmentation click and work
on one image never waits for another image's lock.

No web framework here: :class:`Workbench` is plain Python, so the same calls back the HTTP routes, tests and
notebooks.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.serve.store import (  # noqa: F401  (re-exported: the errors the routes map to statuses)
    ImageStore,
    StoredImage,
    UnknownImageError,
    UnsupportedContentError,
    UploadTooLargeError,
)

KINDS = ("contrastive", "segmentation", "chat")


class Workbench:
    """Uploaded images and lazily loaded predictors for the web app.

    Args:
        store: folder for uploaded files (default: a new private temporary folder, removed by :meth:`close`).
        max_upload_bytes: larger uploads are refused (:class:`UploadTooLargeError`) while they stream in.
        max_images: uploads kept; the least recently used is evicted first.
        ttl_seconds: uploads unused for this long are forgotten and their files removed.
        contrastive_model, segmentation_model: registry names of the models used; segmentation ``"default"``:
            medfoundry-sam-lite, with medfoundry-box3d-tiny for one box propagated in 3D.
        chat_model: registry name (or ``local-dir:PATH``) of a conversational model (none by default);
            ``chat_weights`` overrides its weights.
        index: a retrieval index (``medfoundry index build``) to search for similar cases; without one,
            similar cases are searched among the uploads. Its texts, if any, are the report bank.
        calibration: a calibration file (``medfoundry calibrate``): applied when the labels asked are its labels.
        uncertain_below: a top probability below this is shown as an abstention ("uncertain").
        deid: a :class:`medfoundry.io.deid.Deidentifier`: uploads are de-identified before they are stored.
        seg_threads: PyTorch threads of the segmentation worker (the one thread that runs the segmenter; None:
            PyTorch's default, one per core). One by default: a prompt's decoder is small, and on a shared
            machine a second OpenMP thread waiting for a busy core costs more than it gains (see
            benchmarks/serve_load.py).
        seg_decoder_precision: ``fp32`` or ``bf16`` (the mask decoder in bfloat16: about twice as fast per
            prompt on CPUs with native bfloat16; see :meth:`PromptSegmenter.set_decoder_precision`).
        seg_workers: segmentation worker threads, each with its own copy of the segmenter and its own embedding
            cache (so each encodes an image once); clicks, on the same image or not, run on as many cores at
            once. One by default; the model's memory is held once per worker.
        seg_embed_pool: 2 decodes lite segmenters' prompts on the 2× average-pooled embedding (about 2.5× faster
            per click, coarser boundaries: Kvasir Dice 0.917 vs 0.920, benchmarks/results/seg_kvasir_fast_pool2.json).
    """

    def __init__(self, store: str | Path | None = None, max_upload_bytes: int = 512 << 20, max_images: int = 32,
                 contrastive_model: str = "medfoundry-clip-tiny",
                 segmentation_model: str = "default", index: str | Path | None = None,
                 chat_model: str | None = None, chat_weights: str | None = None, deid: Any = None,
                 ttl_seconds: float = 3600.0, calibration: str | Path | None = None,
                 uncertain_below: float | None = None, seg_threads: int | None = 1,
                 seg_decoder_precision: str = "fp32", seg_workers: int = 1, seg_embed_pool: int = 1) -> None:
        self.images = ImageStore(store, max_upload_bytes=max_upload_bytes, max_images=max_images,
                                 ttl_seconds=ttl_seconds, deid=deid)
        self.store = self.images.folder
        self.model_names = {"contrastive": contrastive_model, "segmentation": segmentation_model, "chat": chat_model}
        self.chat_weights = chat_weights
        self._predictors: dict[str, Any] = {}
        self.locks = {kind: threading.RLock() for kind in KINDS}  # one per predictor: they keep per-call state
        self._load_lock = threading.Lock()
        if seg_threads is not None and seg_threads < 1:
            raise InputContractError(f"seg_threads must be at least 1, got {seg_threads}")
        if seg_decoder_precision not in ("fp32", "bf16"):
            raise InputContractError(f"unknown decoder precision {seg_decoder_precision!r}: use fp32 or bf16")
        if seg_workers < 1:
            raise InputContractError(f"seg_workers must be at least 1, got {seg_workers}")
        self.seg_decoder_precision = seg_decoder_precision
        self.seg_workers = seg_workers
        if seg_embed_pool not in (1, 2):
            raise InputContractError(f"seg_embed_pool must be 1 or 2, got {seg_embed_pool}")
        self.seg_embed_pool = seg_embed_pool
        self.runner = ThreadPoolExecutor(max_workers=seg_workers, thread_name_prefix="medfoundry-seg",
                                         initializer=_set_threads, initargs=(seg_threads,))
        self._worker = threading.local()  # each worker thread's own segmenter (seg_workers > 1)
        self._shared_taken = False  # the loaded segmenter went to a worker (the others open their own)
        self.calibration = None
        self.uncertain_below = uncertain_below
        if calibration is not None:
            from medfoundry.tasks.calibration import Calibration

            self.calibration = Calibration.load(calibration)
            if self.calibration.model != contrastive_model:
                raise InputContractError(f"{calibration} calibrates {self.calibration.model}, not {contrastive_model}")
        self.index = None
        if index is not None:
            from medfoundry.tasks.retrieval import RetrievalIndex

            self.index = RetrievalIndex.load(index)
            if self.index.model != contrastive_model:
                raise InputContractError(f"{index} was built with {self.index.model}; the viewer embeds with "
                                         f"{contrastive_model} (choose it with --clip-model)")

    # -- images ------------------------------------------------------------------------------------------
    def add_upload(self, stream: BinaryIO, filename: str) -> StoredImage:
        """Store and read an upload (see :meth:`ImageStore.add`)."""
        return self.images.add(stream, filename)

    def get(self, image_id: str) -> StoredImage:
        """The uploaded image with this id."""
        return self.images.get(image_id)

    # -- predictors --------------------------------------------------------------------------------------
    def predictor(self, kind: str) -> Any:
        """The loaded predictor of ``kind`` (``contrastive``, ``segmentation`` or ``chat``), loaded on first use."""
        if kind not in KINDS:
            raise InputContractError(f"unknown predictor kind {kind!r}")
        with self._load_lock:
            if kind not in self._predictors:
                name = self.model_names[kind]
                if kind != "chat" and name is None:
                    raise InputContractError(f"no {kind} model configured")
                if kind == "contrastive":
                    from medfoundry.predict.contrastive import open_contrastive

                    self._predictors[kind] = open_contrastive(str(name))
                elif kind == "segmentation":
                    self._predictors[kind] = self._open_segmenter()
                else:
                    from medfoundry.predict.conversational import open_chat

                    if self.model_names["chat"] is None:
                        raise InputContractError("no conversational model: start the viewer with --chat-model NAME")
                    self._predictors[kind] = open_chat(self.model_names["chat"], self.chat_weights)
            return self._predictors[kind]

    def classify(self, image_id: str, labels: list[str], slice_index: int | None = None) -> dict[str, Any]:
        """Zero-shot probabilities of ``labels`` for one image (or axial slice): ``{probs: {label: p},
        calibrated, abstained, uncertain_below}``. The calibration applies when ``labels`` are its labels."""
        from medfoundry.tasks.zero_shot import zero_shot_classify

        labels = [str(x).strip() for x in labels if str(x).strip()]
        if len(labels) < 2:
            raise InputContractError("give at least two labels to choose between")
        plane = self.get(image_id).plane(slice_index)
        cal = self.calibration if self.calibration is not None and labels == self.calibration.labels else None
        with self.locks["contrastive"]:
            result = zero_shot_classify(self.predictor("contrastive"), [plane], labels,
                                        templates=cal.templates if cal else None,
                                        temperature=cal.temperature if cal else None,
                                        uncertain_below=self.uncertain_below)
        return {"probs": {label: float(p) for label, p in zip(result.labels, result.probs[0], strict=True)},
                "calibrated": cal is not None, "abstained": bool(result.uncertain[0]),
                "uncertain_below": self.uncertain_below}

    def ground(self, image_id: str, text: str, slice_index: int | None = None) -> np.ndarray:
        """(H, W) similarity map of ``text`` over the image (grounding heatmap), in the plane's pixels."""
        if not text or not text.strip():
            raise InputContractError("give a text to ground")
        plane = self.get(image_id).plane(slice_index)
        with self.locks["contrastive"]:
            return self.predictor("contrastive").dense_similarity(plane, text.strip())

    def similar(self, image_id: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` most similar cases (cosine of the contrastive embeddings of the middle planes): from the
        index when there is one, otherwise among the other uploads. Items are named by file name only."""
        if not 1 <= k <= 100:
            raise InputContractError(f"k must be between 1 and 100, got {k}")
        query = self._embedding(self.get(image_id))
        if self.index is not None:
            hits = self.index.search(query, k, kind="image")
            return [{"name": Path(h.item).name, "score": h.score, "thumbnail_png": _thumbnail(h.item),
                     **{m: v for m, v in h.meta.items() if m in ("label", "text")}} for h in hits]
        scored = sorted(((float(self._embedding(s) @ query), s) for s in self.images.others(image_id)),
                        key=lambda t: -t[0])[:k]
        return [{"name": s.filename, "id": s.id, "score": score} for score, s in scored]

    def report(self, image_id: str, k: int = 1, slice_index: int | None = None) -> dict[str, Any]:
        """A report by retrieval from the texts of the index: ``{report, sources: [{text, similarity}]}``."""
        from medfoundry.tasks.report import generate_report

        if not 1 <= k <= 20:
            raise InputContractError(f"k must be between 1 and 20, got {k}")
        if self.index is None:
            raise InputContractError("no report bank: start the viewer with --index built with "
                                     "`medfoundry index build --texts reports.csv`")
        plane = self.get(image_id).plane(slice_index)
        with self.locks["contrastive"]:
            return generate_report(self.predictor("contrastive"), plane, self.index, k=k).as_dict()

    def ask(self, image_id: str, question: str, slice_index: int | None = None,
            max_new_tokens: int = 128) -> dict[str, Any]:
        """A conversational model's answer about the image (slice): ``{answer, model, new_tokens, seconds}``."""
        if not 1 <= max_new_tokens <= 1024:
            raise InputContractError(f"max_new_tokens must be between 1 and 1024, got {max_new_tokens}")
        plane = self.get(image_id).plane(slice_index)
        with self.locks["chat"]:
            chat = self.predictor("chat")
            answer = chat.ask(plane, question, max_new_tokens=max_new_tokens)
        return {"answer": answer.text, "model": chat.record.name, "new_tokens": answer.new_tokens,
                "seconds": round(answer.seconds, 3)}

    def _embedding(self, stored: StoredImage) -> np.ndarray:
        with stored.lock:
            if stored.embedding is None:
                with self.locks["contrastive"]:
                    stored.embedding = self.predictor("contrastive").embed_images([stored.plane(None)])[0]
            return stored.embedding

    def _take_shared(self) -> bool:
        """True for the first worker thread that asks (it takes the segmenter already loaded), False after."""
        with self._load_lock:
            first, self._shared_taken = not self._shared_taken, True
            return first

    def _open_segmenter(self) -> Any:
        """A new segmenter of the configured model ("default": medfoundry-sam-lite, with medfoundry-box3d-tiny for
        one box propagated in 3D), with the configured decoder precision."""
        from medfoundry.predict.default_segmenter import open_default_segmenter
        from medfoundry.predict.segment import open_segmenter

        name = str(self.model_names["segmentation"])
        pool = self.seg_embed_pool
        seg = open_default_segmenter(embed_pool=pool) if name == "default" else open_segmenter(name, embed_pool=pool)
        if self.seg_decoder_precision != "fp32":
            seg.set_decoder_precision(self.seg_decoder_precision)
        return seg

    def segment(self, image_id: str, box: list[float] | None, points: list[list[float]] | None = None,
                slice_index: int | None = None, propagate: bool = False) -> dict[str, Any]:
        """Prompted mask through the one segmentation flow (:func:`medfoundry.tasks.segmentation.segment`): box
        XYXY and points (x, y[, label]) in the axial plane's pixels (x = column, y = row). Returns ``{mask_id,
        mask, image, plane, slice, measurement, model}``: the mask (2D (H, W), or (Z, H, W) with ``propagate`` on a
        volume) as bool, the image it lives on, the prompted plane, its slice index and the flow's
        :class:`~medfoundry.tasks.measure.Measurement`. The mask is kept with the image
        (:attr:`StoredImage.masks`) for download under ``mask_id``.

        The model runs on ``seg_workers`` worker threads (:attr:`runner`; one by default), one prompt at a time
        each, so concurrent requests queue for them instead of sharing the CPU cores between more PyTorch calls
        than there are workers."""
        from medfoundry.tasks.segmentation import segment

        stored = self.get(image_id)
        plane = stored.plane(slice_index)  # checks the slice (a 2D image has none but 0)
        k = (stored.depth // 2 if slice_index is None else slice_index) if stored.image.is_volume else None
        if box is None and not points:
            raise InputContractError("give a box or at least one point")
        if points and any(len(p) == 3 and p[2] not in (0, 1) for p in points):
            raise InputContractError("points are [x, y] or [x, y, label] with label 1 (object) or 0 (background)")
        boxes = None if box is None else [box]
        shared = self.predictor("segmentation")  # loaded (and its errors raised) in the request thread

        def run() -> Any:
            if self.seg_workers == 1:
                with stored.lock, self.locks["segmentation"]:
                    return segment(shared, stored.image, boxes, points, k, propagate)
            # several workers: each has its own segmenter, so only the worker itself uses it; the stored image
            # is never modified, so clicks on the same image run side by side
            seg = getattr(self._worker, "segmenter", None)
            if seg is None:
                seg = self._worker.segmenter = shared if self._take_shared() else self._open_segmenter()
            return segment(seg, stored.image, boxes, points, k, propagate)

        outcome = self.runner.submit(run).result()
        mask = np.asarray(outcome.mask, dtype=bool)
        mask_id = uuid.uuid4().hex[:16]
        with stored.lock:
            stored.keep_mask(mask_id, {"mask": mask, "slice": k, "propagated": propagate})
        return {"mask_id": mask_id, "mask": mask, "image": outcome.image, "plane": plane, "slice": k,
                "measurement": outcome.measurement, "model": outcome.model}

    def close(self) -> None:
        """Stop the model worker, forget the images and remove the store if this workbench created it."""
        self.runner.shutdown(wait=False, cancel_futures=True)
        self.images.close()


def _thumbnail(item: str, size: int = 96) -> str | None:
    """A base64 PNG thumbnail of an indexed image (its middle plane), or None when it cannot be read now.
    ``item`` comes from the index the server was started with, never from a request."""
    import base64
    import io

    from PIL import Image

    from medfoundry.errors import MedfoundryError
    from medfoundry.io import read_image
    from medfoundry.viz import display_rgb, thumbnail

    try:
        image = read_image(item)
        plane = image.slice(image.array.shape[0] // 2) if image.is_volume else image
        buf = io.BytesIO()
        Image.fromarray(thumbnail(display_rgb(plane), size)).save(buf, format="PNG")
    except (MedfoundryError, OSError, ValueError):
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _set_threads(n: int | None) -> None:
    """PyTorch's intra-op threads for the calling thread (OpenMP keeps the number per thread)."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def plane_of(image: MedImage, slice_index: int | None) -> MedImage:
    """The axial plane ``slice_index`` of ``image`` (the image itself when 2D)."""
    return image.slice(slice_index) if image.is_volume and slice_index is not None else image
