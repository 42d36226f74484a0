"""Recall, speed and memory of the vector index kinds (exact, HNSW, IVF-PQ) of ``medfoundry.tasks.vector_index``.

    nice -n 5 python benchmarks/index_bench.py synthetic --n 1000000 --queries 300 \\
        --out benchmarks/results/index_bench_synthetic_1m.json
    nice -n 5 python benchmarks/index_bench.py real --batch-out OUT   # a `medfoundry batch embed` folder
    python benchmarks/index_bench.py table benchmarks/results/index_bench_*.json   # the README's table

``synthetic``: ``--n`` unit vectors of width 512 from a Gaussian mixture (:class:`Clusters`, seeded, drawn in
chunks): 1,000 clusters, each a random unit centre plus a variation of norm about 0.6 in a shared 64-dimensional
subspace and isotropic noise of norm 0.1, L2-normalised. Embeddings of real images are clustered and of low
intrinsic dimension; uniform random 512-d vectors have no neighbours worth finding, so an approximate index
looks either useless or perfect on them. ``--queries`` fresh vectors of the same mixture are the queries.
``real``: the embeddings of a batch job; ``--queries`` of them, chosen at random, are held out of the index and
used as queries.

Each kind runs in its own process (so its memory is its own): it builds the index from the vectors streamed in
chunks from a file (build time, peak resident memory of the process while building), opens it as
``medfoundry index search`` does (resident memory it adds, size on disk) and answers all queries in one call with
one thread, for each search setting in ``--ef-search`` (HNSW) and ``--ivf-search`` (IVF-PQ ``nprobe:k_factor``).
Queries per second are reported both per second of wall time and per CPU second of the process (the machine is
shared, so wall time depends on the load; CPU time much less); recall@10 is against the exact index's top 10.
Writes JSON to ``--out`` (default ``benchmarks/results/index_bench_<mode>.json``), after each kind.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty

import numpy as np

from medfoundry.eval.provenance import collect

DIM = 512


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


class Clusters:
    """The synthetic Gaussian mixture (see the module docstring), reproducible chunk by chunk."""

    def __init__(self, seed: int = 0, centres: int = 1000, latent: int = 64, spread: float = 0.6,
                 noise: float = 0.1) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(centres, DIM)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.basis = rng.normal(size=(latent, DIM)).astype(np.float32) / np.sqrt(DIM)
        self.spread, self.noise, self.latent = spread, noise, latent

    def draw(self, n: int, seed: int) -> np.ndarray:
        """(n, 512) float32 unit vectors."""
        rng = np.random.default_rng(seed)
        c = rng.integers(0, len(self.centres), n)
        z = rng.standard_normal(size=(n, self.latent), dtype=np.float32)
        x = self.centres[c] + self.spread / np.sqrt(self.latent) * (z @ self.basis)
        x += self.noise / np.sqrt(DIM) * rng.standard_normal(size=(n, DIM), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


DISTRIBUTION = ("Gaussian mixture: 1000 clusters, each a random unit centre + a variation of norm ~0.6 in a shared "
                "64-d subspace + isotropic noise of norm 0.1, L2-normalised (Clusters in benchmarks/index_bench.py)")


def write_synthetic(gen: Clusters, n: int, path: Path, chunk: int = 50_000) -> None:
    """The ``n`` vectors, drawn in seeded chunks into a .npy file (read again, by chunks, for every kind)."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x[start : start + m] = gen.draw(m, seed=1000 + start // chunk)
    x.flush()
    del x


def file_chunks(path: Path, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, dict[str, list]]]:
    """(vectors, {id}) chunks of a .npy file, read with plain file reads (no memory map, so the resident memory
    of a build is the index's and one chunk's)."""
    head = np.load(path, mmap_mode="r")
    n, dim, offset = head.shape[0], head.shape[1], head.offset
    del head
    with open(path, "rb") as fh:
        fh.seek(offset)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            part = np.fromfile(fh, dtype=np.float32, count=m * dim).reshape(m, dim)
            yield part, {"id": [f"v{start + i}" for i in range(m)]}


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``; not inherited from the parent,
    unlike getrusage's ru_maxrss, which survives fork and exec)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


def run_kind(kind: str, params: dict, settings: list[dict], work: str, count: int, shard_size: int,
             queue: mp.Queue) -> None:
    """In a child process: build ``kind`` over ``work``/base.npy, open it, search with every setting."""
    import faiss

    from medfoundry.tasks.vector_index import IndexParams, VectorIndex, build_vector_index

    workdir = Path(work)
    queries = np.load(workdir / "queries.npy")
    train = np.load(workdir / "train.npy") if kind == "ivfpq" else None
    dim = queries.shape[1]
    start_rss = rss_mib()
    folder = workdir / kind
    t0, c0 = time.perf_counter(), time.process_time()
    header = build_vector_index(file_chunks(workdir / "base.npy"), folder, dim=dim, count=count,
                                params=IndexParams(kind=kind, **params), shard_size=shard_size,
                                train_vectors=train, overwrite=True)
    build = {"build_s": round(time.perf_counter() - t0, 2), "build_cpu_s": round(time.process_time() - c0, 2),
             "build_peak_rss_mib": round(rss_mib("VmHWM"), 1), "process_rss_before_build_mib": round(start_rss, 1)}
    del train
    before = rss_mib()
    index = VectorIndex(folder)
    faiss.omp_set_num_threads(1)
    index.search_many(queries[:10], 10)  # warm up (and page in what the memory map holds)
    build.update({"search_rss_mib": round(rss_mib() - before, 1),
                  "index_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(".faiss")),
                  "items_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(".parquet")),
                  "factory": header.factory, "shards": len(header.shards), "vectors": header.count,
                  "built_params": header.params})
    rows = []
    for setting in settings:
        index.set_search_params(**setting)
        t0, c0 = time.perf_counter(), time.process_time()
        _, ids = index.search_many(queries, 10)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({"search": setting, "search_s": round(wall, 4), "search_cpu_s": round(cpu, 4),
                     "qps": round(len(queries) / wall, 1), "qps_cpu": round(len(queries) / max(cpu, 1e-9), 1),
                     "ids": ids})
    del index
    shutil.rmtree(folder)
    queue.put({"build": build, "searches": rows})


def bench(kinds: list[str], params: dict, settings: dict, workdir: Path, count: int, shard_size: int,
          report) -> list[dict]:
    ctx = mp.get_context("spawn")  # a fresh process per kind: its own memory peak, no forked OpenMP state
    rows: list[dict] = []
    truth = exact = None
    for kind in ["exact", *[k for k in kinds if k != "exact"]]:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_kind, args=(kind, params.get(kind, {}), settings.get(kind, [{}]),
                                                  str(workdir), count, shard_size, queue))
        proc.start()
        while True:
            try:
                result = queue.get(timeout=10)
                break
            except Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"the {kind} process died (exit code {proc.exitcode})") from None
        proc.join()
        for s in result["searches"]:
            ids = s.pop("ids")
            if kind == "exact":
                truth, exact = ids, s
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))
            rows.append({"kind": kind, **s, "recall_at_10": round(recall, 4),
                         "speedup_vs_exact": round(s["qps"] / exact["qps"], 1),
                         "speedup_vs_exact_cpu": round(s["qps_cpu"] / exact["qps_cpu"], 1), **result["build"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "built_params"}), flush=True)
        report(rows)
    return rows


def best_rows(rows: list[dict], target_recall: float = 0.95) -> list[dict]:
    """Per kind, the fastest (per CPU second) search setting with recall@10 ≥ ``target_recall`` (or the most
    accurate one when none reaches it): the trade-off table of the README."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        ok = [r for r in mine if r["recall_at_10"] >= target_recall]
        pick = max(ok, key=lambda r: r["qps_cpu"]) if ok else max(mine, key=lambda r: r["recall_at_10"])
        out.append({k: pick[k] for k in ("kind", "factory", "search", "recall_at_10", "qps", "qps_cpu",
                                         "speedup_vs_exact", "speedup_vs_exact_cpu", "build_s", "build_cpu_s",
                                         "build_peak_rss_mib", "search_rss_mib", "index_bytes", "shards")})
        out[-1]["meets_target"] = pick["recall_at_10"] >= target_recall and pick["speedup_vs_exact_cpu"] >= 20
    return out


def parse_settings(args: argparse.Namespace) -> dict:
    ivf = []
    for item in args.ivf_search.split(","):
        nprobe, _, kf = item.partition(":")
        ivf.append({"nprobe": int(nprobe), "k_factor": int(kf or args.k_factor)})
    return {"hnsw": [{"ef_search": int(e)} for e in args.ef_search.split(",")], "ivfpq": ivf, "exact": [{}]}


def markdown_table(files: list[str]) -> str:
    """The README's trade-off table (the ``best`` rows) of result files: ``python benchmarks/index_bench.py table
    benchmarks/results/index_bench_*.json``."""
    lines = ["| data | kind (FAISS) | search setting | recall@10 | queries/CPU-s (× exact) | queries/s wall (× exact) "
             "| index size | memory to search | build (wall / CPU) | build peak RSS |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in files:
        d = json.loads(Path(f).read_text())
        name = f"{d['data']['vectors']:,} × {d['data']['dim']}" + (" real" if d["mode"] == "real" else " synthetic")
        for b in d["best"]:
            setting = ", ".join(f"{k} {v}" for k, v in b["search"].items()) or "–"
            lines.append(f"| {name} | {b['kind']} (`{b['factory']}`) | {setting} | {b['recall_at_10']:.3f} | "
                         f"{b['qps_cpu']:,.0f} ({b['speedup_vs_exact_cpu']:g}×) | {b['qps']:,.0f} "
                         f"({b['speedup_vs_exact']:g}×) | {b['index_bytes'] / 2**20:,.0f} MiB | "
                         f"{b['search_rss_mib']:,.0f} MiB | {b['build_s']:,.0f} s / {b['build_cpu_s']:,.0f} s | "
                         f"{b['build_peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["table"]:
        print(markdown_table(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["synthetic", "real"])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic: number of vectors")
    parser.add_argument("--batch-out", default=None, help="real: the --out folder of `medfoundry batch embed`")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--kinds", default="exact,hnsw,ivfpq")
    parser.add_argument("--shard-size", type=int, default=2_000_000)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", default="16,32,64,128", help="HNSW efSearch values to measure")
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--pq-bits", type=int, default=4, help="8, or 4 (fast scan: 16x cheaper PQ training)")
    parser.add_argument("--refine", default="sq8", choices=["none", "sq8", "flat"])
    parser.add_argument("--k-factor", type=int, default=16)
    parser.add_argument("--ivf-search", default="4:16,8:16,16:16,32:32", help="IVF-PQ nprobe:k_factor values")
    parser.add_argument("--train-size", type=int, default=65_536)
    parser.add_argument("--build-threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="OpenMP threads while building (searches use 1)")
    parser.add_argument("--workdir", default=None, help="where the vectors and indexes are written (a temp folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.build_threads)  # inherited by the spawned processes
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared machine
    settings = parse_settings(args)
    load0 = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="index_bench_", dir=args.workdir))
    started = time.time()
    out = Path(args.out or f"benchmarks/results/index_bench_{args.mode}.json")
    meta: dict = {}

    def write(rows: list[dict], complete: bool = False) -> None:
        """The results so far (after each kind), so a run cut short keeps what it measured."""
        result = {"benchmark": "index_bench", "mode": args.mode, "data": meta, "complete": complete,
                  "kinds_requested": args.kinds.split(","),
                  "target": "recall@10 >= 0.95 at >= 20x the exact index's queries per second",
                  "best": best_rows(rows), "rows": rows,
                  "cpu": cpu_model(), "cpus": os.cpu_count(), "build_threads": args.build_threads,
                  "search_threads": 1, "loadavg_start": [round(v, 2) for v in load0],
                  "loadavg_end": [round(v, 2) for v in os.getloadavg()], "wall_s": round(time.time() - started, 1),
                  "note": "the machine's cores are shared with other jobs (see loadavg; run under nice -n 5): wall "
                          "times are upper bounds; qps_cpu (queries per CPU second, one thread) depends much less "
                          "on the load",
                  "command": "nice -n 5 python benchmarks/index_bench.py "
                             + " ".join("OUT" if a == args.batch_out else "TMP" if a == args.workdir else a
                                       for a in sys.argv[1:]),
                  # the vectors' model and weights sha256 (real mode) are in "data", read from the batch shards
                  "provenance": collect(name=meta.get("model", "none (synthetic vectors)"),
                                        data=args.batch_out if args.mode != "synthetic" else None,
                                        settings=args)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    params = {"hnsw": {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction},
              "ivfpq": {"nlist": args.nlist, "pq_m": args.pq_m, "pq_bits": args.pq_bits, "refine": args.refine,
                        "k_factor": args.k_factor, "train_size": args.train_size}}
    try:
        if args.mode == "synthetic":
            gen = Clusters()
            np.save(workdir / "queries.npy", gen.draw(args.queries, seed=7))
            np.save(workdir / "train.npy", gen.draw(args.train_size, seed=8))
            t0 = time.perf_counter()
            write_synthetic(gen, args.n, workdir / "base.npy")
            print(f"drew {args.n} vectors in {time.perf_counter() - t0:.1f} s", flush=True)
            meta.update({"vectors": args.n, "dim": DIM, "seed": 0, "queries": args.queries,
                         "train_vectors": args.train_size, "distribution": DISTRIBUTION})
            count = args.n
        else:
            from medfoundry.tasks.vector_index import iter_parquet_vectors, parquet_info

            info = parquet_info(args.batch_out)
            x = np.concatenate([v for v, _ in iter_parquet_vectors(info["files"])])
            rng = np.random.default_rng(0)
            held = rng.choice(len(x), size=min(args.queries, len(x) // 5), replace=False)
            base = x[np.setdiff1d(np.arange(len(x)), held)]
            np.save(workdir / "queries.npy", x[held])
            np.save(workdir / "base.npy", base)
            np.save(workdir / "train.npy", base[: args.train_size])
            if x.shape[1] % args.pq_m:
                params["ivfpq"]["pq_m"] = 16
            count = len(base)
            meta.update({"vectors": count, "dim": int(x.shape[1]), "model": info["model"],
                         "weights_sha256": info["weights_sha256"], "queries_held_out": len(held)})
        rows = bench(args.kinds.split(","), params, settings, workdir, count, args.shard_size, write)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(rows, complete=True)
    print(json.dumps(best_rows(rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
