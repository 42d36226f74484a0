"""Recall, speed and memory of the vector index kinds (exact, HNSW, IVF-PQ) of ``medfoundry.tasks.vector_index``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/index_bench.py synthetic --n 1000000
    OMP_NUM_THREADS=1 python benchmarks/index_bench.py real --batch-out OUT   # a `medfoundry batch embed` folder

``synthetic``: ``--n`` unit vectors of width 512 drawn in chunks (seeded) from 1,000 clusters: a random unit centre
plus a variation of norm about 0.6 in a shared 64-dimensional subspace and small isotropic noise (embeddings of
real images are clustered and of low intrinsic dimension; uniform random 512-d vectors have no neighbours worth
finding). ``--queries`` fresh
vectors from the same clusters are the queries. ``real``: the embeddings of a batch job; ``--queries`` of them,
chosen at random, are held out of the index and used as queries.

For each kind: build time (s), index size on disk (bytes; what a search holds in memory, memory-mapped), the
process's peak resident memory after building it, queries per second (the whole query set in one call, one
thread when OMP_NUM_THREADS=1) and recall@10 against the exact index's top 10. Writes JSON to
``benchmarks/results/index_bench_<mode>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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
    """The synthetic distribution (see the module docstring), reproducible chunk by chunk."""

    def __init__(self, seed: int = 0, centres: int = 1000, latent: int = 64, spread: float = 0.6,
                 noise: float = 0.1) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(centres, DIM)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.basis = rng.normal(size=(latent, DIM)).astype(np.float32) / np.sqrt(DIM)
        self.spread, self.noise, self.latent = spread, noise, latent

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.integers(0, len(self.centres), n)
        z = rng.standard_normal(size=(n, self.latent), dtype=np.float32)
        x = self.centres[c] + self.spread / np.sqrt(self.latent) * (z @ self.basis)
        x += self.noise / np.sqrt(DIM) * rng.standard_normal(size=(n, DIM), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_file(gen: Clusters, n: int, path: Path, chunk: int = 50_000) -> np.ndarray:
    """The ``n`` vectors, drawn once in seeded chunks into a memory-mapped .npy (read again for every kind)."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x[start : start + m] = gen.draw(m, seed=1000 + start // chunk)
    x.flush()
    return np.load(path, mmap_mode="r")


def array_chunks(x: np.ndarray, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, dict[str, list]]]:
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start : start + chunk])
        yield part, {"id": [f"v{start + i}" for i in range(len(part))]}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def bench(kinds: list[str], make_chunks, count: int, train: np.ndarray, queries: np.ndarray, params: dict,
          shard_size: int, workdir: Path, report=lambda rows: None) -> list[dict]:
    from medfoundry.tasks.vector_index import IndexParams, VectorIndex, build_vector_index

    rows, truth, exact_qps = [], None, None
    for kind in ["exact", *[k for k in kinds if k != "exact"]]:
        p = IndexParams(kind=kind, **params.get(kind, {}))
        folder = workdir / kind
        t0 = time.perf_counter()
        header = build_vector_index(make_chunks(), folder, dim=DIM if train is None else train.shape[1],
                                    count=count, params=p, shard_size=shard_size,
                                    train_vectors=train if kind == "ivfpq" else None, overwrite=True)
        build_s = time.perf_counter() - t0
        index = VectorIndex(folder)
        index.search_many(queries[:10], 10)  # warm the memory-mapped pages
        t0 = time.perf_counter()
        _, ids = index.search_many(queries, 10)
        search_s = time.perf_counter() - t0
        qps = len(queries) / search_s
        if kind == "exact":
            truth, exact_qps = ids, qps
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))
        rows.append({"kind": kind, "factory": header.factory, "params": header.params, "shards": len(header.shards),
                     "vectors": header.count, "build_s": round(build_s, 2), "index_bytes": dir_bytes(folder),
                     "bytes_per_vector": round(dir_bytes(folder) / header.count, 1),
                     "peak_rss_mib_after_build": round(peak_rss_mib(), 1), "queries": len(queries),
                     "search_s": round(search_s, 4), "qps": round(qps, 1),
                     "speedup_vs_exact": round(qps / exact_qps, 2), "recall_at_10": round(recall, 4)})
        print(json.dumps(rows[-1]), flush=True)
        report(rows)
        del index
        if kind != "exact":
            shutil.rmtree(folder)
    shutil.rmtree(workdir / "exact", ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["synthetic", "real"])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic: number of vectors")
    parser.add_argument("--batch-out", default=None, help="real: the --out folder of `medfoundry batch embed`")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="exact,hnsw,ivfpq")
    parser.add_argument("--shard-size", type=int, default=2_000_000)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--k-factor", type=int, default=16)
    parser.add_argument("--workdir", default=None, help="where the indexes are built (a temporary folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    params = {"hnsw": {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
              "ivfpq": {"nlist": args.nlist, "nprobe": args.nprobe, "k_factor": args.k_factor}}
    load0 = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="index_bench_", dir=args.workdir))
    started = time.time()
    out = Path(args.out or f"benchmarks/results/index_bench_{args.mode}.json")
    meta: dict = {}

    def write(rows: list[dict], complete: bool = False) -> None:
        """The results so far (after each kind), so a run cut short keeps what it measured."""
        result = {"benchmark": "index_bench", "mode": args.mode, "data": meta, "rows": rows, "complete": complete,
                  "kinds_requested": args.kinds.split(","),
                  "target": "recall@10 >= 0.95 at >= 20x the exact index's queries per second",
                  "cpu": cpu_model(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                  "loadavg_start": load0, "loadavg_now": os.getloadavg(), "wall_s": round(time.time() - started, 1),
                  "note": "the machine (2 cores) is shared by many processes at once: see loadavg; the script ran "
                          "under nice -n 10, so times are upper bounds of what the CPU can do",
                  "command": "python benchmarks/index_bench.py "
                             + " ".join("OUT" if a == args.batch_out else a for a in sys.argv[1:])}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    try:
        if args.mode == "synthetic":
            gen = Clusters()
            queries = gen.draw(args.queries, seed=7)
            train = gen.draw(65_536, seed=8)
            t0 = time.perf_counter()
            x = synthetic_file(gen, args.n, workdir / "vectors.npy")
            print(f"drew {args.n} vectors in {time.perf_counter() - t0:.1f} s", flush=True)
            meta.update({"vectors": args.n, "dim": DIM, "seed": 0, "queries": len(queries),
                         "distribution": "1000 clusters: unit centre + a variation of norm ~0.6 in a shared 64-d "
                                         "subspace + 0.1 isotropic noise, normalised (Clusters in this script)"})
            rows = bench(args.kinds.split(","), lambda: array_chunks(x), args.n, train,
                         queries, params, args.shard_size, workdir, write)
            data = {"vectors": args.n, "dim": DIM, "seed": 0,
                    "distribution": "1000 clusters: unit centre + a variation of norm ~0.6 in a shared 64-d subspace "
                                    "+ 0.1 isotropic noise, normalised (Clusters in this script)"}
        else:
            from medfoundry.tasks.vector_index import iter_parquet_vectors, parquet_info

            info = parquet_info(args.batch_out)
            meta.update({"model": info["model"]})
            vecs, ids = [], []
            for v, cols in iter_parquet_vectors(info["files"]):
                vecs.append(v)
                ids.extend(cols["id"])
            x = np.concatenate(vecs)
            rng = np.random.default_rng(0)
            held = rng.choice(len(x), size=min(args.queries, len(x) // 5), replace=False)
            keep = np.setdiff1d(np.arange(len(x)), held)
            queries, base = x[held], x[keep]
            base_ids = [ids[i] for i in keep]
            params["ivfpq"].setdefault("nlist", None)
            rows = bench(args.kinds.split(","), lambda: iter([(base, {"id": base_ids})]), len(base), base,
                         queries, {**params, "ivfpq": {**params["ivfpq"], "pq_m": 64 if x.shape[1] % 64 == 0
                                                       else 16}}, args.shard_size, workdir, write)
            data = {"vectors": len(base), "dim": int(x.shape[1]), "model": info["model"],
                    "weights_sha256": info["weights_sha256"], "queries_held_out": len(queries)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta.update(data)
    write(rows, complete=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
