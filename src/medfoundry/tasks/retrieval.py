"""A persistent image/text retrieval index over an archive (FAISS, exact inner product on unit vectors).

The whole index is one ``.npz`` file (FAISS's serialised index + JSON metadata, no pickles), written
atomically: an interrupted build leaves the previous index intact and usable. Builds are incremental: files
already indexed (same path, size and modification time) are skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError, MedfoundryError
from medfoundry.files import atomic_output
from medfoundry.io.read import NIBABEL_SUFFIXES, RASTER_SUFFIXES

IMAGE_SUFFIXES = (".dcm", ".npy", ".npz", *NIBABEL_SUFFIXES, *RASTER_SUFFIXES)


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise MedfoundryError("retrieval needs faiss: pip install faiss-cpu") from exc
    return faiss


@dataclass
class Hit:
    """One search result: the item's cosine similarity to the query, its kind and where it came from."""

    score: float
    kind: str
    item: str
    meta: dict[str, Any] = field(default_factory=dict)


class RetrievalIndex:
    """Unit-norm embeddings of images and texts from one model, with their metadata."""

    def __init__(self, model: str, dim: int, weights_sha256: str | None = None) -> None:
        self.model, self.dim, self.weights_sha256 = model, dim, weights_sha256
        self.index = _faiss().IndexFlatIP(dim)
        self.items: list[dict[str, Any]] = []

    @classmethod
    def for_predictor(cls, predictor: Any, dim: int | None = None) -> RetrievalIndex:
        """An empty index for ``predictor``'s embeddings, naming its model and the sha256 of the weights it loaded
        (the registry record's sha256 for a predictor that does not say)."""
        dim = predictor.embed_texts(["x"]).shape[1] if dim is None else dim
        return cls(predictor.record.name, dim, _weights_sha256(predictor))

    def check_model(self, predictor: Any, where: str = "the index") -> None:
        """Refuse to mix embeddings: raise InputContractError if ``predictor`` is another model than the one that
        built the index, or the same model with other weights (when both sha256 are known)."""
        if self.model != predictor.record.name:
            raise InputContractError(f"{where} was built with {self.model}, not {predictor.record.name}")
        sha = _weights_sha256(predictor)
        if self.weights_sha256 and sha and sha != self.weights_sha256:
            raise InputContractError(
                f"{where} was built with other weights of {self.model} (sha256 {self.weights_sha256[:12]}…, these "
                f"are {sha[:12]}…): rebuild it, or pass the weights it was built with (--weights)")

    def __len__(self) -> int:
        return len(self.items)

    def add(self, embeddings: np.ndarray, items: list[dict[str, Any]]) -> None:
        """Add (N, D) unit-norm embeddings with one metadata dict each (``kind``, ``item`` and anything else)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(embeddings) != len(items):
            raise InputContractError(f"expected {len(items)} × {self.dim} embeddings, got {embeddings.shape}")
        self.index.add(embeddings)
        self.items.extend(items)

    def search(self, query: np.ndarray, k: int = 10, kind: str | None = None) -> list[Hit]:
        """The ``k`` items most similar to a (D,) unit query, optionally only of one ``kind``."""
        if len(self) == 0:
            return []
        n = len(self) if kind else min(k, len(self))
        scores, ids = self.index.search(np.asarray(query, np.float32).reshape(1, -1), n)
        hits = []
        for score, i in zip(scores[0], ids[0], strict=True):
            if i < 0 or (kind and self.items[i]["kind"] != kind):
                continue
            item = self.items[i]
            hits.append(Hit(float(score), item["kind"], item["item"], {k2: v for k2, v in item.items()
                                                                     if k2 not in ("kind", "item")}))
            if len(hits) == k:
                break
        return hits

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (.npz), replacing the previous version only once fully written."""
        blob = _faiss().serialize_index(self.index)
        header = {"model": self.model, "dim": self.dim, "weights_sha256": self.weights_sha256, "items": self.items}
        meta = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, faiss=blob, meta=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Read an index written by :meth:`save` (no pickles are loaded)."""
        path = Path(path)
        if not path.is_file():
            raise InputContractError(f"no index at {path}: build one with `medfoundry index build`")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["meta"].tobytes().decode())
                blob = z["faiss"]
        except (ValueError, KeyError, OSError) as exc:
            raise InputContractError(f"{path} is not a medfoundry index ({exc})") from exc
        out = cls(header["model"], header["dim"], header.get("weights_sha256"))
        out.index = _faiss().deserialize_index(blob)
        out.items = header["items"]
        return out


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{int(stat.st_mtime)}"


def _weights_sha256(predictor: Any) -> str | None:
    """sha256 of the weights ``predictor`` loaded, else the first one its registry record lists."""
    loaded = getattr(predictor, "loaded_weights", None)
    if loaded is not None:
        return loaded.sha256
    return next((w.sha256 for w in predictor.record.weights if w.sha256), None)


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` by suffix (DICOM series folders are indexed file by file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputContractError(f"{folder} is not a folder")
    walker = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in walker if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def build_index(predictor: Any, folder: str | Path | None, path: str | Path, *, texts: list[str] | None = None,
                recursive: bool = True, progress: bool = True, batch: int = 64) -> tuple[RetrievalIndex, int, int]:
    """Add the images under ``folder`` (None: texts only) and ``texts`` to the index at ``path`` (created if
    absent).

    Unreadable files are skipped and counted. Returns (index, added, skipped). The file is rewritten once, at
    the end, atomically.
    """
    from medfoundry.io import read_image

    path = Path(path)
    if path.is_file():
        index = RetrievalIndex.load(path)
        index.check_model(predictor, str(path))
    else:
        index = RetrievalIndex.for_predictor(predictor)
    known = {(it["item"], it.get("fingerprint")) for it in index.items if it["kind"] == "image"}
    listed = list_images(folder, recursive) if folder is not None else []
    todo = [p for p in listed if (str(p.resolve()), _fingerprint(p)) not in known]
    added = skipped = 0
    from rich.progress import track

    chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    for chunk in track(chunks, description="indexing", disable=not progress or not chunks):
        images, items = [], []
        for p in chunk:
            try:
                image = read_image(p)
            except MedfoundryError:
                skipped += 1
                continue
            extra = {}
            if image.is_volume:
                extra["slice"] = image.array.shape[0] // 2
                image = image.slice(extra["slice"])
            images.append(image)
            items.append({"kind": "image", "item": str(p.resolve()), "fingerprint": _fingerprint(p),
                          "modality": image.modality, **extra})
        if images:
            index.add(predictor.embed_images(images), items)
            added += len(images)
    if texts:
        added += add_texts(index, predictor, texts, batch=4 * batch, progress=progress)
    index.save(path)
    return index, added, skipped


def list_volumes(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Volume sources under ``folder``: NIfTI/.npz/.npy files, and each folder that directly holds ``.dcm`` files
    (one DICOM series)."""
    files = [p for p in list_images(folder, recursive) if not p.name.lower().endswith((".dcm", *RASTER_SUFFIXES))]
    walker = Path(folder).rglob("*.dcm") if recursive else Path(folder).glob("*.dcm")
    series = sorted({p.parent for p in walker if p.is_file()})
    return sorted(files + series)


def build_volume_index(predictor: Any, folder: str | Path, path: str | Path, *, recursive: bool = True,
                       progress: bool = True) -> tuple[RetrievalIndex, int, int]:
    """Add every volume under ``folder`` (see :func:`list_volumes`), one whole-volume embedding each from a 3D
    encoder (:class:`~medfoundry.predict.volume_encoder.VolumeEncoderPredictor`), to the index at ``path``.

    Files that are unreadable or not volumes (a single slice, no spacing) are skipped and counted. Returns
    (index, added, skipped); the file is rewritten once, at the end, atomically.
    """
    from rich.progress import track

    from medfoundry.io import read_image

    path = Path(path)
    name, dim = predictor.record.name, int(predictor.record.arch_config["feature_dim"])
    if path.is_file():
        index = RetrievalIndex.load(path)
        if index.model != name:
            raise InputContractError(f"{path} was built with {index.model}, not {name}")
    else:
        index = RetrievalIndex(name, dim, next((w.sha256 for w in predictor.record.weights if w.sha256), None))
    known = {(it["item"], it.get("fingerprint")) for it in index.items if it["kind"] == "volume"}
    todo = [p for p in list_volumes(folder, recursive) if (str(p.resolve()), _fingerprint(p)) not in known]
    added = skipped = 0
    for p in track(todo, description="indexing volumes", disable=not progress or not todo):
        try:
            image = read_image(p)
            emb = predictor.embed_volumes([image])
        except MedfoundryError:
            skipped += 1
            continue
        index.add(emb, [{"kind": "volume", "item": str(p.resolve()), "fingerprint": _fingerprint(p),
                         "modality": image.modality, "shape": list(image.spatial_shape)}])
        added += 1
    index.save(path)
    return index, added, skipped


def add_texts(index: RetrievalIndex, predictor: Any, texts: list[str], batch: int = 256,
              progress: bool = False) -> int:
    """Embed the ``texts`` not yet in ``index`` (each once), ``batch`` at a time, and add them; returns how many
    were added."""
    from rich.progress import track

    known = {it["item"] for it in index.items if it["kind"] == "text"}
    new = [t for t in dict.fromkeys(texts) if t not in known]
    chunks = [new[i : i + batch] for i in range(0, len(new), batch)]
    for chunk in track(chunks, description="indexing texts", disable=not progress or len(chunks) < 2):
        index.add(predictor.embed_texts(chunk), [{"kind": "text", "item": t} for t in chunk])
    return len(new)


def default_index_path() -> Path:
    return Path(os.environ.get("MEDFOUNDRY_INDEX", "medfoundry-index.npz"))
