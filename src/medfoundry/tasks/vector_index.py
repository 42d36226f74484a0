"""A sharded vector index for millions of embeddings: exact, HNSW or IVF-PQ (FAISS), searched the same way.

The index is a folder::

    index.json                    kind, FAISS factory string, search parameters, model, weights sha256, shards
    shard-00000.faiss             one FAISS index (inner product on unit vectors = cosine similarity)
    shard-00000.items.parquet     its items, in FAISS id order: ``id``, ``source`` (and ``slice`` when given)

It is built by streaming (N, D) chunks of vectors (e.g. the Parquet shards of ``medfoundry batch embed``): at most
``shard_size`` vectors are held at a time, so an archive that does not fit in memory becomes several shards. A
search asks every shard for its best ``k`` and merges them by score. The folder is written beside its final place
and renamed into it once complete: an interrupted build leaves the previous index intact.

Kinds (``KINDS``):

- ``exact``: ``IndexFlatIP``, today's exact search; 4·D bytes a vector.
- ``hnsw``: ``HNSW{M},Flat`` graph (no training); 4·D + ~8·M bytes a vector; ``efSearch`` trades speed for recall.
- ``ivfpq``: ``IVF{nlist},PQ{m}x{bits}`` inverted lists of product-quantised codes (``bits`` 8, or 4 for the
  SIMD "fast-scan" layout), whose best ``k·k_factor`` candidates are re-ranked (``refine``) with 8-bit
  scalar-quantised vectors (``sq8``: ``Refine(SQ8)``, m + D bytes a vector), with the exact float32 vectors
  (``flat``: ``RFlat``, m + 4·D bytes) or not at all (``none``: m bytes). ``nprobe`` lists are searched. Trained
  once on a random sample of the vectors; every shard shares the trained quantisers.

Memory: ``max_memory`` (bytes) bounds what one shard holds (:meth:`IndexParams.bytes_per_vector` a vector), so a
build keeps one shard (plus one input chunk) in memory at a time; a :class:`VectorIndex` opened with a
``max_memory`` smaller than the index loads its shards one after the other for each search instead of all at once.
Search parameters (``nprobe``, ``ef_search``, ``k_factor``) are stored in ``index.json`` and can be overridden
when searching (:meth:`VectorIndex.set_search_params`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError, MedfoundryError
from medfoundry.tasks.retrieval import Hit

KINDS = ("exact", "hnsw", "ivfpq")
REFINES = ("none", "sq8", "flat")
FORMAT = "medfoundry-vector-index/1"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise MedfoundryError("vector indexes need faiss: pip install faiss-cpu") from exc
    return faiss


def _arrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise MedfoundryError("Parquet input/output needs pyarrow: pip install 'medfoundry[batch]'") from exc
    return pyarrow


@dataclass
class IndexParams:
    """How an index is built and searched. ``nlist`` None: about 4·√N lists, between 64 and 4096 (from the
    expected total ``count``)."""

    kind: str = "exact"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    pq_m: int = 64
    pq_bits: int = 8
    refine: str = "sq8"
    nprobe: int = 32
    k_factor: int = 16
    train_size: int = 65_536

    def factory(self, dim: int, count: int) -> str:
        """The FAISS ``index_factory`` string of this kind for ``count`` vectors of width ``dim``."""
        if self.kind == "exact":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.kind == "ivfpq":
            if dim % self.pq_m:
                raise InputContractError(f"--pq-m {self.pq_m} must divide the embedding width {dim}")
            if self.pq_bits not in (4, 8):
                raise InputContractError(f"--pq-bits must be 8 or 4 (fast scan), not {self.pq_bits}")
            if self.refine not in REFINES:
                raise InputContractError(f"--refine must be one of {', '.join(REFINES)}, not {self.refine!r}")
            pq = f"PQ{self.pq_m}x{'4fs' if self.pq_bits == 4 else 8}"
            return f"IVF{self.lists(count)},{pq}" + {"none": "", "sq8": ",Refine(SQ8)", "flat": ",RFlat"}[self.refine]
        raise InputContractError(f"unknown index kind {self.kind!r}: use one of {', '.join(KINDS)}")

    def lists(self, count: int) -> int:
        """The number of IVF lists for ``count`` vectors."""
        return self.nlist or int(min(4096, max(64, 4 * np.sqrt(max(count, 1)))))

    def bytes_per_vector(self, dim: int) -> float:
        """About how many bytes one vector of width ``dim`` takes in memory in this kind of index (the FAISS
        structure; the items table adds its ids)."""
        if self.kind == "hnsw":
            return 4 * dim + 8 * self.hnsw_m + 16  # vectors + level-0 links (2·M int32) + upper levels
        if self.kind == "ivfpq":
            codes = self.pq_m * self.pq_bits / 8 + 8  # PQ code + the int64 id in its inverted list
            return codes + {"none": 0, "sq8": dim, "flat": 4 * dim}.get(self.refine, 0)
        return 4 * dim

    def shard_size_for(self, max_memory: int, dim: int) -> int:
        """The most vectors of width ``dim`` a shard may hold to stay within ``max_memory`` bytes (at least 1)."""
        return max(1, int(max_memory // self.bytes_per_vector(dim)))


def parse_bytes(text: str | int) -> int:
    """``"512M"``, ``"8G"``, ``"1.5GiB"`` or ``"65536"`` → bytes (K/M/G/T are powers of 1024)."""
    if isinstance(text, int):
        return text
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(raw[-1:], 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        raise InputContractError(f"{text!r} is not a size (e.g. 512M, 8G)") from None
    if value < 1:
        raise InputContractError(f"a memory size must be positive, not {text!r}")
    return int(value)


def apply_search_params(index: Any, params: IndexParams) -> None:
    """Set ``efSearch`` (HNSW) or ``nprobe``/``k_factor`` (IVF-PQ) on a loaded FAISS index."""
    faiss = _faiss()
    if params.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params.ef_search
    elif params.kind == "ivfpq":
        top = faiss.downcast_index(index)
        if hasattr(top, "k_factor"):  # a refine step
            top.k_factor = float(params.k_factor)
        faiss.extract_index_ivf(index).nprobe = params.nprobe


@dataclass
class Shard:
    file: str
    items: str
    count: int


@dataclass
class IndexHeader:
    """What ``index.json`` holds."""

    kind: str
    factory: str
    dim: int
    count: int
    model: str | None
    weights_sha256: str | None
    params: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    format: str = FORMAT


def _unit(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputContractError(f"expected vectors of width {dim}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputContractError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _skip_polysemous_training(index: Any) -> None:
    """``index_factory`` switches on polysemous training for 8-bit PQ codes: a simulated annealing that reorders
    each codebook so that Hamming distances between codes mean something. medfoundry searches by asymmetric
    distance (``polysemous_ht`` 0), which no codebook order changes, so the annealing (seconds even for a few
    thousand vectors) buys nothing."""
    import faiss

    for candidate in (index, getattr(index, "base_index", None)):
        if candidate is not None:
            inner = faiss.downcast_index(candidate)
            if hasattr(inner, "do_polysemous_training"):
                inner.do_polysemous_training = False


def build_vector_index(chunks: Iterable[tuple[np.ndarray, dict[str, list]]], out: str | Path, *, dim: int,
                       count: int, params: IndexParams, model: str | None = None,
                       weights_sha256: str | None = None, shard_size: int = 2_000_000,
                       train_vectors: np.ndarray | None = None, overwrite: bool = False,
                       max_memory: int | None = None) -> IndexHeader:
    """Build the index folder ``out`` from ``chunks`` of (vectors (n, D) float32, columns {name: n values}).

    A shard holds at most ``shard_size`` vectors, fewer when ``max_memory`` (bytes a shard may take in memory,
    see :meth:`IndexParams.shard_size_for`) asks for it.

    ``count`` is the expected total (sizes the IVF lists); ``train_vectors`` (T, D) trains IVF-PQ (required for
    that kind: a random sample, e.g. from :func:`sample_parquet_vectors`). The columns must include ``id``; all
    chunks must have the same column names. Vectors are L2-normalised. Returns the header written.
    """
    faiss, pa = _faiss(), _arrow()
    out = Path(out)
    if out.exists() and not overwrite:
        from medfoundry.errors import OutputExistsError

        raise OutputExistsError(out)
    factory = params.factory(dim, count)
    if max_memory is not None:
        shard_size = min(shard_size, params.shard_size_for(max_memory, dim))
    trained = None
    if params.kind == "ivfpq":
        if train_vectors is None or len(train_vectors) < 256:
            raise InputContractError("an IVF-PQ index needs at least 256 training vectors")
        nlist = params.lists(count)
        if len(train_vectors) < 39 * nlist:
            params = IndexParams(**{**asdict(params), "nlist": max(1, len(train_vectors) // 39)})
            factory = params.factory(dim, count)
        trained = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        _skip_polysemous_training(trained)
        trained.train(_unit(train_vectors, dim))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    header = IndexHeader(params.kind, factory, dim, 0, model, weights_sha256, asdict(params))
    try:
        current: Any = None
        columns: dict[str, list[Any]] = {}
        filled = 0

        def flush() -> None:
            nonlocal current, columns, filled
            if current is None or filled == 0:
                return
            name = f"shard-{len(header.shards):05d}"
            faiss.write_index(current, str(tmp / f"{name}.faiss"))
            pa.parquet.write_table(pa.table(columns), tmp / f"{name}.items.parquet")
            header.shards.append(asdict(Shard(f"{name}.faiss", f"{name}.items.parquet", filled)))
            header.count += filled
            current, columns, filled = None, {}, 0

        for vectors, cols in chunks:
            if "id" not in cols:
                raise InputContractError("every chunk of items needs an 'id' column")
            vectors = _unit(vectors, dim)
            start = 0
            while start < len(vectors):
                if current is None:
                    current = faiss.clone_index(trained) if trained is not None else faiss.index_factory(
                        dim, factory, faiss.METRIC_INNER_PRODUCT)
                    if params.kind == "hnsw":
                        faiss.downcast_index(current).hnsw.efConstruction = params.ef_construction
                    columns = {k: [] for k in cols}
                take = min(len(vectors) - start, shard_size - filled)
                current.add(vectors[start : start + take])
                for k, values in cols.items():
                    columns[k].extend(list(values[start : start + take]))
                filled += take
                start += take
                if filled >= shard_size:
                    flush()
        flush()
        if header.count == 0:
            raise InputContractError("no vectors to index")
        (tmp / "index.json").write_text(json.dumps(asdict(header), indent=1))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return header


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished folder ``tmp`` (the old one is removed only once the new one is in place)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# -- Parquet input (the output of `medfoundry batch embed`) --------------------------------------------------------

def _parquet_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    results = folder / "results" if (folder / "results").is_dir() else folder
    files = sorted(results.glob("*.parquet")) if results.is_dir() else []
    if not files:
        raise InputContractError(f"no Parquet shards in {results} (the --out folder of `medfoundry batch embed`)")
    return files


def parquet_info(folder: str | Path) -> dict[str, Any]:
    """Rows, embedding width, model and weights sha256 of a batch output folder (from the Parquet footers and
    the first row); InputContractError when shards disagree on the model or lack an ``embedding`` column."""
    pa = _arrow()
    files, rows, models = _parquet_files(folder), 0, set()
    dim = None
    for f in files:
        meta = pa.parquet.read_metadata(f)
        rows += meta.num_rows
        schema = pa.parquet.read_schema(f)
        if "embedding" not in schema.names:
            raise InputContractError(f"{f} has no 'embedding' column: index the output of `medfoundry batch embed`")
        if meta.num_rows and dim is None:
            head = pa.parquet.ParquetFile(f).read_row_group(0, columns=["embedding", "model", "weights_sha256"])
            dim = len(head.column("embedding")[0].as_py())
        if meta.num_rows:
            t = pa.parquet.read_table(f, columns=["model", "weights_sha256"])
            models |= set(zip(t.column("model").to_pylist(), t.column("weights_sha256").to_pylist(), strict=True))
    if len(models) > 1:
        raise InputContractError(f"{folder} mixes embeddings of several models/weights: {sorted(models)}")
    model, sha = next(iter(models)) if models else (None, None)
    return {"files": files, "rows": rows, "dim": dim, "model": model, "weights_sha256": sha}


def iter_parquet_vectors(files: list[Path], batch_rows: int = 65_536) -> Iterator[tuple[np.ndarray, dict[str, list]]]:
    """(vectors, {id, source[, slice]}) chunks of the Parquet shards, ``batch_rows`` at a time."""
    pa = _arrow()
    for f in files:
        pf = pa.parquet.ParquetFile(f)
        names = [c for c in ("id", "source", "slice") if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["embedding", *names]):
            if batch.num_rows == 0:
                continue
            emb = batch.column("embedding")
            flat = emb.flatten().to_numpy(zero_copy_only=False)
            vectors = np.asarray(flat, dtype=np.float32).reshape(batch.num_rows, -1)
            yield vectors, {n: batch.column(n).to_pylist() for n in names}


def sample_parquet_vectors(files: list[Path], total: int, size: int, seed: int = 0) -> np.ndarray:
    """A uniform random sample of ``size`` rows (all when fewer) of the shards' embeddings, read by streaming."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out, offset = [], 0
    for vectors, _ in iter_parquet_vectors(files):
        lo, hi = np.searchsorted(chosen, [offset, offset + len(vectors)])
        out.append(vectors[chosen[lo:hi] - offset])
        offset += len(vectors)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def build_from_batch_output(folder: str | Path, out: str | Path, params: IndexParams, *,
                            shard_size: int = 2_000_000, overwrite: bool = False,
                            max_memory: int | None = None) -> IndexHeader:
    """Index the embeddings of a ``medfoundry batch embed`` output folder (its ``results/*.parquet``)."""
    info = parquet_info(folder)
    if not info["rows"]:
        raise InputContractError(f"{folder} holds no embeddings")
    train = None
    if params.kind == "ivfpq":
        train = sample_parquet_vectors(info["files"], info["rows"], params.train_size)
    return build_vector_index(iter_parquet_vectors(info["files"]), out, dim=info["dim"], count=info["rows"],
                              params=params, model=info["model"], weights_sha256=info["weights_sha256"],
                              shard_size=shard_size, train_vectors=train, overwrite=overwrite,
                              max_memory=max_memory)


# -- search -------------------------------------------------------------------------------------------------------

class VectorIndex:
    """A built index folder, opened for search (shards memory-mapped read-only).

    ``max_memory`` (bytes): when the shards' files together are larger, none is kept open; each search loads the
    shards one after the other (slower, but at most one shard in memory). ``nprobe``/``ef_search``/``k_factor``
    override the search parameters stored at build time.
    """

    def __init__(self, folder: str | Path, mmap: bool = True, max_memory: int | None = None,
                 nprobe: int | None = None, ef_search: int | None = None, k_factor: int | None = None) -> None:
        pa = _arrow()
        self.folder = Path(folder)
        path = self.folder / "index.json"
        if not path.is_file():
            raise InputContractError(f"no vector index at {self.folder} (no index.json): build one with "
                                     "`medfoundry index build --from-batch`")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}")
            self.header = IndexHeader(**raw)
            self.params = IndexParams(**self.header.params)
        except (ValueError, TypeError) as exc:
            raise InputContractError(f"{path} is not a medfoundry vector index ({exc})") from exc
        self.mmap = mmap
        self.index_bytes = sum((self.folder / s["file"]).stat().st_size for s in self.header.shards)
        self.streaming = max_memory is not None and self.index_bytes > max_memory
        self.shards: list[Any] = []
        self.items = [pa.parquet.read_table(self.folder / s["items"]) for s in self.header.shards]
        if not self.streaming:
            self.shards = [self._load(s) for s in self.header.shards]
        self.set_search_params(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)

    def _load(self, shard: dict[str, Any]) -> Any:
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if self.mmap else 0
        index = faiss.read_index(str(self.folder / shard["file"]), flags)
        apply_search_params(index, self.params)
        return index

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None,
                          k_factor: int | None = None) -> None:
        """Change ``nprobe`` (IVF-PQ lists searched), ``ef_search`` (HNSW candidates) or ``k_factor`` (IVF-PQ
        candidates re-ranked, as a multiple of k) for the following searches; None keeps the current value."""
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search), ("k_factor", k_factor)):
            if value is not None:
                if value < 1:
                    raise InputContractError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
                setattr(self.params, name, int(value))
        for index in self.shards:
            apply_search_params(index, self.params)

    # the attributes the CLI reads from an index, as RetrievalIndex has them
    @property
    def model(self) -> str | None:
        return self.header.model

    @property
    def weights_sha256(self) -> str | None:
        return self.header.weights_sha256

    @property
    def dim(self) -> int:
        return self.header.dim

    def __len__(self) -> int:
        return self.header.count

    def check_model(self, predictor: Any, where: str = "the index") -> None:
        """InputContractError if ``predictor`` is another model, or other weights, than the index was built with."""
        from medfoundry.tasks.retrieval import _weights_sha256

        if self.model != predictor.record.name:
            raise InputContractError(f"{where} was built with {self.model}, not {predictor.record.name}")
        sha = _weights_sha256(predictor)
        if self.weights_sha256 and sha and sha != self.weights_sha256:
            raise InputContractError(f"{where} was built with other weights of {self.model} (sha256 "
                                     f"{self.weights_sha256[:12]}…, these are {sha[:12]}…)")

    def search_many(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (Q, k) for (Q, D) queries: cosine similarity, descending, and global ids (the
        row over all shards in order; -1 where fewer than k items exist)."""
        queries = _unit(np.atleast_2d(queries), self.dim)
        all_s, all_i, offset = [], [], 0
        for n, shard in enumerate(self.header.shards):
            index = self._load(shard) if self.streaming else self.shards[n]
            s, i = index.search(queries, min(k, shard["count"]))
            del index
            all_s.append(s)
            all_i.append(np.where(i >= 0, i + offset, -1))
            offset += shard["count"]
        scores, ids = np.concatenate(all_s, axis=1), np.concatenate(all_i, axis=1)
        scores = np.where(ids >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def item(self, gid: int) -> dict[str, Any]:
        """The columns of the item with global id ``gid``."""
        for table, shard in zip(self.items, self.header.shards, strict=True):
            if gid < shard["count"]:
                return {name: table.column(name)[gid].as_py() for name in table.column_names}
            gid -= shard["count"]
        raise IndexError(gid)

    def search(self, query: np.ndarray, k: int = 10, kind: str | None = None) -> list[Hit]:
        """The ``k`` items most similar to a (D,) query, as :class:`Hit` (kind ``image``; batch outputs hold images
        only, so any other ``kind`` finds nothing)."""
        if kind not in (None, "image"):
            return []
        scores, ids = self.search_many(np.asarray(query, np.float32).reshape(1, -1), k)
        hits = []
        for score, gid in zip(scores[0], ids[0], strict=True):
            if gid < 0:
                continue
            meta = self.item(int(gid))
            name = meta.pop("source", None) or meta.get("id")
            hits.append(Hit(float(score), "image", str(name), meta))
        return hits


def is_vector_index(path: str | Path) -> bool:
    """True for a folder holding an ``index.json`` (a :class:`VectorIndex`), False for anything else."""
    return (Path(path) / "index.json").is_file()
