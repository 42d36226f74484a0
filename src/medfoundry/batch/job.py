"""Batch inference jobs on Ray Data: stream a manifest through model replicas into Parquet shards, resumably.

Layout of the output folder ``out``::

    job.json                      task, model, weights sha256, options of the job (checked when resuming)
    results/part-<run>-<n>.parquet  one row per finished item (ids, the task's results, model, weights sha256)
    errors/part-<run>-<n>.parquet   one row per failed item: id, row, source, stage:type, message

Shards are written whole (temporary name, then renamed), as results stream out of Ray, so a job killed at any
point keeps every shard already written; a re-run with the same ``out`` reads the ids in ``results`` and
``errors`` and processes only the others (``retry_errors`` processes the failed ones again). Ray runs locally by
default (``address=None``) or joins a cluster (``address="ray://host:10001"`` or ``"auto"``); each replica is an
actor that loads the model once (``map_batches(BatchWorker, concurrency=workers)``), and Ray restarts a replica
that dies, retrying its batch.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.batch.manifest import read_manifest
from medfoundry.batch.workers import OUTPUT_KEYS, BatchWorker, WorkerConfig, _cell
from medfoundry.errors import InputContractError, MedfoundryError


class BatchJobError(MedfoundryError):
    """A batch job stopped (e.g. its output could not be written); what was written before is kept."""


@dataclass
class JobSummary:
    """What one run did: items in the manifest, already done before it, processed now (ok / failed), duplicate
    rows, shards written, seconds and items per second."""

    out: str
    task: str
    model: str
    weights_sha256: str | None
    manifest_rows: int
    already_done: int
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet
    except ImportError as exc:
        raise MedfoundryError("batch jobs need pyarrow and ray: pip install 'medfoundry[batch]'") from exc
    return pa


def done_ids(out: str | Path, include_errors: bool = True) -> set[str]:
    """Ids already in ``out``'s results (and errors) shards: what a re-run skips."""
    pa = _pa()
    ids: set[str] = set()
    for sub in ("results", "errors") if include_errors else ("results",):
        for f in sorted((Path(out) / sub).glob("*.parquet")):
            ids.update(pa.parquet.read_table(f, columns=["id"]).column("id").to_pylist())
    return ids


def _weights_sha256(model: str, weights: str | None) -> tuple[str, str | None]:
    """(record name, sha256 of the weights the replicas will load), without building the model."""
    from medfoundry.registry.loading import LoadedWeights, fetch_weights

    record, resolved = fetch_weights(model, weights)
    return record.name, LoadedWeights(resolved).sha256


class ShardWriter:
    """Writes result and error rows into Parquet shards of at most ``rows`` rows, each file whole or not at all."""

    def __init__(self, out: Path, task: str, model: str, sha: str | None, rows: int = 1000) -> None:
        self.out, self.task, self.model, self.sha, self.limit = out, task, model, sha, rows
        self.run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.written: list[str] = []
        self.count = 0

    def add(self, item: dict[str, Any]) -> None:
        if item["error_type"]:
            self.errors.append({"id": item["id"], "row": int(item["row"]), "source": item["source"],
                                "error_type": item["error_type"], "error": item["error"],
                                "model": self.model, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        else:
            self.results.append(item)
        if len(self.results) >= self.limit or len(self.errors) >= self.limit:
            self.flush()

    def flush(self) -> None:
        pa = _pa()
        if self.results:
            self._write("results", self._results_table(self.results))
            self.results = []
        if self.errors:
            self._write("errors", pa.Table.from_pylist(self.errors))
            self.errors = []

    def _results_table(self, items: list[dict[str, Any]]) -> Any:
        pa = _pa()
        rows = []
        for it in items:
            payload = json.loads(it["payload"]) if it["payload"] else {}
            payload.pop("dim", None)
            rows.append({"id": it["id"], "row": int(it["row"]), "source": it["source"],
                         "slice": None if it["slice"] is None else int(it["slice"]), **payload,
                         "model": self.model, "weights_sha256": self.sha, "task": self.task})
        table = pa.Table.from_pylist(rows, schema=result_schema(self.task))
        if self.task == "embed":
            emb = np.stack([np.frombuffer(it["embedding"], dtype=np.float32) for it in items])
            values = pa.array(emb.reshape(-1), type=pa.float32())
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
        return table

    def _write(self, sub: str, table: Any) -> None:
        pa = _pa()
        folder = self.out / sub
        final = folder / f"part-{self.run}-{len(self.written):05d}.parquet"
        tmp = folder / f".{final.name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            pa.parquet.write_table(table, tmp)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BatchJobError(f"writing {final} failed ({type(exc).__name__}: {exc}); the {len(self.written)} shards "
                                f"written before it ({self.count} items) are kept: free space and run the same "
                                "command again to finish the rest") from exc
        self.written.append(str(final.relative_to(self.out)))
        self.count += table.num_rows


def result_schema(task: str) -> Any:
    """The Parquet schema of a task's results (without ``embedding``, a fixed-size float32 list appended by embed):
    the same in every shard, whatever its rows hold."""
    pa = _pa()
    fields = [("id", pa.string()), ("row", pa.int64()), ("source", pa.string()), ("slice", pa.int64())]
    if task == "classify":
        fields += [("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())),
                   ("prediction", pa.string()), ("confidence", pa.float64())]
    elif task == "segment":
        fields += [("mask_shape", pa.list_(pa.int64())), ("mask_rle", pa.string()), ("iou", pa.list_(pa.float64())),
                   ("pixels", pa.int64()), ("area_mm2", pa.float64()), ("volume_ml", pa.float64()),
                   ("long_axis_mm", pa.float64()), ("short_axis_mm", pa.float64()), ("key_slice", pa.int64()),
                   ("mean", pa.float64()), ("std", pa.float64()), ("units", pa.string()),
                   ("spacing_known", pa.bool_()), ("size_unit", pa.string())]
    fields += [("model", pa.string()), ("weights_sha256", pa.string()), ("task", pa.string())]
    return pa.schema(fields)


class Progress:
    """Items done, items per second and ETA, on one line of stderr at most every ``every`` seconds."""

    def __init__(self, total: int, enabled: bool = True, every: float = 2.0) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.start: float | None = None  # the rate counts from the first finished item (after start-up)
        self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int, force: bool = False) -> None:
        now = time.perf_counter()
        if self.start is None and n:
            self.start, self.first = now, n
        self.done += n
        if not self.enabled or (now - self.last < self.every and not force):
            return
        self.last = now
        counted = self.done - self.first if self.start is not None else 0
        rate = counted / max(now - self.start, 1e-9) if self.start is not None else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?"
        print(f"batch: {self.done}/{self.total} items ({100 * self.done / max(self.total, 1):.0f} %), "
              f"{rate:.1f} items/s, ETA {eta_text}", file=sys.stderr, flush=True)


def run_batch_job(task: str, manifest: str | Path, out: str | Path, *, model: str, weights: str | None = None,
                  workers: int = 1, address: str | None = None, batch_size: int = 16, shard_rows: int = 1000,
                  labels: list[str] | None = None, label_set: str | None = None,
                  templates: list[str] | None = None, threads_per_worker: int | None = None,
                  retry_errors: bool = False, progress: bool = True,
                  ray_init: dict[str, Any] | None = None, engine: str = "ray") -> JobSummary:
    """Run (or resume) ``task`` (embed, classify, segment) over ``manifest`` into the folder ``out``.

    Raises InputContractError for a bad manifest, or an ``out`` made by another task, model or weights;
    BatchJobError when a shard cannot be written (earlier shards are kept). Ray is started only when there is
    work left (``ray_init``: extra ``ray.init`` arguments, e.g. ``num_cpus`` or ``object_store_memory``);
    ``engine="local"`` runs one replica in this process instead (same outputs, no Ray).
    """
    if task == "classify" and not labels and not label_set:
        raise InputContractError("classify needs --labels or --label-set")
    if workers < 1:
        raise InputContractError("--workers must be at least 1")
    started = time.perf_counter()
    spec = read_manifest(manifest, task)
    out = Path(out)
    name, sha = _weights_sha256(model, weights)
    _check_job(out, {"task": task, "model": name, "weights_sha256": sha, "labels": labels, "label_set": label_set,
                     "templates": templates})
    done = done_ids(out, include_errors=not retry_errors)
    pending = [r for r in spec.rows if r["id"] not in done]
    writer = ShardWriter(out, task, name, sha, shard_rows)
    summary = JobSummary(str(out), task, name, sha, len(spec.rows) + len(spec.duplicates),
                         len(spec.rows) - len(pending))
    known_dupes = done_ids(out) if spec.duplicates else set()
    for d in spec.duplicates:
        key = f"{d['id']}#row{d['row']}"
        if key not in known_dupes:
            writer.add({"id": key, "row": d["row"], "source": d["source"], "error_type": "manifest:Duplicate",
                        "error": f"duplicate of row {d['duplicate_of']} (id {d['id']!r}); processed once"})
            summary.duplicates += 1
    if pending:
        config = WorkerConfig(task, model, weights, labels, label_set, templates,
                              threads_per_worker or max(1, (os.cpu_count() or 1) // workers))
        meter = Progress(len(pending), progress)
        try:
            results = (_ray_results(pending, config, workers, address, batch_size, ray_init) if engine == "ray"
                       else _local_results(pending, config, batch_size))
            for item in results:
                writer.add(item)
                summary.processed += 1
                summary.failed += bool(item["error_type"])
                meter.update(1)
        finally:
            writer.flush()
            meter.update(0, force=True)
    else:
        writer.flush()
    summary.succeeded = summary.processed - summary.failed
    summary.shards = writer.written
    summary.seconds = time.perf_counter() - started
    return summary


def _check_job(out: Path, job: dict[str, Any]) -> None:
    """Write ``out/job.json``, or check that the existing one is the same job (same task, model, weights and
    labels): results of two models must not mix in one folder."""
    path = out / "job.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise InputContractError(f"{path} is not a batch job description ({exc})") from exc
        diff = [k for k in job if old.get(k) != job[k]]
        if diff:
            raise InputContractError(f"{out} holds another job ({', '.join(f'{k}={old.get(k)!r}' for k in diff)}): "
                                     "use another --out, or the same options to resume it")
        return
    if out.exists() and any(out.iterdir()):
        raise InputContractError(f"{out} exists and is not a batch job folder (no job.json): use another --out")
    out.mkdir(parents=True, exist_ok=True)
    from medfoundry.files import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({**job, "format": "medfoundry-batch/1"}, indent=1))


def _local_results(rows: list[dict[str, Any]], config: WorkerConfig, batch_size: int):
    """The same outputs as :func:`_ray_results`, from one replica in this process."""
    worker = BatchWorker(config)
    for start in range(0, len(rows), batch_size):
        yield from worker.process(rows[start : start + batch_size])


def _ray_results(rows: list[dict[str, Any]], config: WorkerConfig, workers: int, address: str | None,
                 batch_size: int, ray_init: dict[str, Any] | None):
    """Stream the worker outputs of ``rows`` (dicts with OUTPUT_KEYS) as Ray Data produces them."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MedfoundryError("batch jobs need ray: pip install 'medfoundry[batch]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if address:
            kwargs["address"] = address
        kwargs.update(ray_init or {})
        ray.init(**kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        cells = [{k: (None if r.get(k) is None else str(r[k])) for k in r if k != "row"} | {"row": int(r["row"])}
                 for r in rows]
        ds = ray.data.from_items(cells, override_num_blocks=max(1, min(len(cells) // max(batch_size, 1), 10_000)))
        ds = ds.map_batches(BatchWorker, fn_constructor_args=(config,), batch_size=batch_size, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=workers), batch_format="numpy")
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n = len(batch["id"])
            for i in range(n):
                yield {k: _cell(batch[k][i]) for k in OUTPUT_KEYS}
    finally:
        if started_here:
            ray.shutdown()


def summary_dict(summary: JobSummary) -> dict[str, Any]:
    """The summary as JSON-ready data, with items per second."""
    return {**asdict(summary), "items_per_second": round(summary.items_per_second, 2)}
