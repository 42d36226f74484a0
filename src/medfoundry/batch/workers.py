"""Model replicas of a batch job: load the model once, then turn batches of manifest rows into results.

A :class:`BatchWorker` is what Ray Data holds as an actor (``map_batches(BatchWorker, concurrency=N)``); it is
plain Python and runs the same in one process (:meth:`BatchWorker.process`). It calls only the predictors' public
entry points (``ContrastivePredictor.embed_images``, :func:`~medfoundry.tasks.zero_shot.zero_shot_classify`,
``PromptSegmenter.set_image``/``predict``, :func:`~medfoundry.tasks.measure.measure`), so every item's output is
what the single-process predictor gives for it.

Each output row has ``id``, ``row``, ``source``, ``error_type`` and ``error`` (empty when it worked), ``payload``
(JSON of the task's results) and ``embedding`` (float32 bytes, embed only). A failing item never stops the batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfoundry.batch.manifest import parse_numbers
from medfoundry.errors import InputContractError

OUTPUT_KEYS = ("id", "row", "source", "slice", "error_type", "error", "payload", "embedding")


@dataclass
class WorkerConfig:
    """What every replica loads: ``task``, ``model``/``weights`` (registry name and optional weights), and for
    classify ``labels`` or ``label_set`` (with ``templates``); ``threads``: torch CPU threads per replica."""

    task: str
    model: str
    weights: str | None = None
    labels: list[str] | None = None
    label_set: str | None = None
    templates: list[str] | None = None
    threads: int = 1


def rle_encode(mask: np.ndarray) -> str:
    """COCO run-length encoding (pycocotools' compressed ``counts`` string, column-major) of an (H, W) mask."""
    from pycocotools import mask as coco

    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def rle_decode(counts: str, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of :func:`rle_encode`'s ``counts``."""
    from pycocotools import mask as coco

    return coco.decode({"size": list(shape), "counts": counts.encode("ascii")}).astype(bool)


class BatchWorker:
    """One model replica. ``__call__`` takes a Ray Data batch (dict of column → array) and returns one."""

    def __init__(self, config: WorkerConfig) -> None:
        import torch

        torch.set_num_threads(max(1, config.threads))
        self.config = config
        if config.task == "segment":
            from medfoundry.predict.segment import open_segmenter

            self.predictor: Any = open_segmenter(config.model, config.weights)
        else:
            from medfoundry.predict.contrastive import open_contrastive

            self.predictor = open_contrastive(config.model, config.weights)
        self.prompts = None
        if config.task == "classify":
            from medfoundry.tasks.zero_shot import label_set

            if config.label_set:
                self.prompts = label_set(self.predictor, config.label_set)
            if not (config.labels or self.prompts):
                raise InputContractError("classify needs labels or a label set")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(batch)
        rows = [{n: _cell(v) for n, v in zip(names, values, strict=True)}
                for values in zip(*(batch[n] for n in names), strict=True)]
        outs = self.process(rows)
        return {k: np.array([o[k] for o in outs], dtype=object) for k in OUTPUT_KEYS}

    # -- the work, one batch of rows -------------------------------------------------------------------------
    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Results of ``rows`` (dicts with row, id, source, slice and the task's fields), one per row, in order."""
        outs: list[dict[str, Any]] = [{"id": str(r["id"]), "row": int(r["row"]), "source": str(r["source"]),
                                       "slice": None, "error_type": "", "error": "", "payload": "",
                                       "embedding": b""} for r in rows]
        images: dict[int, Any] = {}
        for i, r in enumerate(rows):
            try:
                images[i], outs[i]["slice"] = read_item(r)
            except Exception as exc:
                _fail(outs[i], exc, "read")
        if self.config.task == "segment":
            for i, image in images.items():
                try:
                    outs[i]["payload"] = json.dumps(self._segment(image, rows[i]))
                except Exception as exc:
                    _fail(outs[i], exc, "predict")
            return outs
        self._contrastive(rows, images, outs)
        return outs

    def _contrastive(self, rows: list[dict[str, Any]], images: dict[int, Any], outs: list[dict[str, Any]]) -> None:
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i in images:
            key = None
            if self.config.task == "classify":
                own = rows[i].get("labels")
                key = tuple(s.strip() for s in own.split(",")) if own else None
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            try:
                self._run_group(key, idx, images, outs)
            except Exception:
                for i in idx:
                    try:
                        self._run_group(key, [i], images, outs)
                    except Exception as exc:
                        _fail(outs[i], exc, "predict")

    def _run_group(self, labels: tuple[str, ...] | None, idx: list[int], images: dict[int, Any],
                   outs: list[dict[str, Any]]) -> None:
        batch = [images[i] for i in idx]
        if self.config.task == "embed":
            emb = self.predictor.embed_images(batch)
            for i, e in zip(idx, emb, strict=True):
                outs[i]["embedding"] = np.asarray(e, np.float32).tobytes()
                outs[i]["payload"] = json.dumps({"dim": int(e.shape[0])})
            return
        from medfoundry.tasks.zero_shot import zero_shot_classify

        names = list(labels) if labels else list(self.config.labels or self.prompts or ())
        result = zero_shot_classify(self.predictor, batch, names, templates=self.config.templates,
                                    prompts=self.prompts)
        for j, i in enumerate(idx):
            best, conf = result.top(j)
            outs[i]["payload"] = json.dumps({"labels": result.labels, "scores": result.probs[j].tolist(),
                                             "prediction": best, "confidence": conf})

    def _segment(self, image: Any, row: dict[str, Any]) -> dict[str, Any]:
        from medfoundry.tasks.measure import measure

        boxes = parse_numbers(row.get("boxes"), (4,), "box")
        points = parse_numbers(row.get("points"), (2, 3), "point")
        if not boxes and not points:
            raise InputContractError("no prompt: give boxes (x0,y0,x1,y1) or points (x,y[,label])")
        pts = np.array([p[:2] for p in points], dtype=np.float32) if points else None
        plabels = np.array([int(p[2]) if len(p) > 2 else 1 for p in points]) if points else None
        self.predictor.set_image(image)
        result = self.predictor.predict(boxes=np.array(boxes, dtype=np.float32) if boxes else None, points=pts,
                                        point_labels=plabels)
        mask = result.best().any(axis=0)
        return {"mask_shape": list(mask.shape), "mask_rle": rle_encode(mask),
                "iou": result.iou.max(axis=1).tolist(), **measure(mask, image).to_dict()}


def read_item(row: dict[str, Any]) -> tuple[Any, int | None]:
    """The 2D image of a manifest row (its ``slice`` of a volume, the middle slice by default) and that slice."""
    from medfoundry.io import read_image

    if not row.get("source"):
        raise InputContractError("empty path")
    image = read_image(row["source"])
    text = row.get("slice")
    if image.is_volume:
        n = image.array.shape[0]
        try:
            k = int(text) if text is not None else n // 2
        except ValueError:
            raise InputContractError(f"slice {text!r} is not an integer") from None
        if not 0 <= k < n:
            raise InputContractError(f"slice {k} is outside the volume's {n} slices")
        return image.slice(k), k
    if text is not None:
        raise InputContractError(f"slice {text} given for a 2D image")
    return image, None


def _cell(value: Any) -> Any:
    """A Ray batch cell as plain Python: numpy scalars unwrapped, missing values (None, NaN) as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _fail(out: dict[str, Any], exc: BaseException, stage: str) -> None:
    out["error_type"] = f"{stage}:{type(exc).__name__}"
    out["error"] = str(exc)[:2000] or type(exc).__name__
    out["payload"], out["embedding"] = "", b""
