"""Sharded vector indexes: exact equals brute force, approximate kinds find the neighbours, shards merge,
builds are atomic, and `index build --from-batch` / `index search` work on a batch job's Parquet output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="Parquet input needs pyarrow (pip install 'medfoundry[batch]')")

from medfoundry.errors import InputContractError, OutputExistsError  # noqa: E402
from medfoundry.tasks.vector_index import (  # noqa: E402
    IndexParams,
    VectorIndex,
    build_from_batch_output,
    build_vector_index,
    parse_bytes,
)


def _data(n: int = 3000, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d))
    x = centres[rng.integers(0, 30, n)] + 0.4 * rng.normal(size=(n, d))
    q = centres[rng.integers(0, 30, 50)] + 0.4 * rng.normal(size=(50, d))
    x, q = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, q))
    return x.astype(np.float32), q.astype(np.float32)


def _chunks(x: np.ndarray, size: int = 700):
    for s in range(0, len(x), size):
        yield x[s : s + size], {"id": [f"v{i}" for i in range(s, min(s + size, len(x)))]}


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_kinds_against_brute_force(kind: str, tmp_path: Path) -> None:
    x, q = _data()
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    header = build_vector_index(_chunks(x), tmp_path / "idx", dim=32, count=len(x),
                                params=IndexParams(kind=kind, pq_m=8, nlist=16, nprobe=8), shard_size=1000,
                                train_vectors=x)
    assert len(header.shards) == 3 and header.count == len(x)  # 3000 vectors in shards of 1000
    index = VectorIndex(tmp_path / "idx")
    scores, ids = index.search_many(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall == 1.0 if kind == "exact" else recall >= 0.9
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # merged across shards, best first
    if kind == "exact":
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, truth, 1), atol=1e-5)
    hits = index.search(q[0], k=3)
    assert [h.item for h in hits] == [f"v{i}" for i in ids[0, :3]] and hits[0].kind == "image"
    assert index.search(q[0], k=3, kind="text") == []


def test_build_is_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    x, _ = _data(500)
    build_vector_index(_chunks(x), tmp_path / "idx", dim=32, count=500, params=IndexParams())

    def broken():
        yield x[:100], {"id": ["a"] * 100}
        raise RuntimeError("killed")

    with pytest.raises(OutputExistsError):
        build_vector_index(_chunks(x), tmp_path / "idx", dim=32, count=500, params=IndexParams())
    with pytest.raises(RuntimeError):
        build_vector_index(broken(), tmp_path / "idx", dim=32, count=500, params=IndexParams(), overwrite=True)
    assert len(VectorIndex(tmp_path / "idx")) == 500  # the previous index is intact
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # and no half-built folder is left
    with pytest.raises(InputContractError, match="width 32"):
        build_vector_index(iter([(x[:, :16], {"id": ["a"] * 500})]), tmp_path / "j", dim=32, count=500,
                           params=IndexParams())
    with pytest.raises(InputContractError, match="training vectors"):
        build_vector_index(_chunks(x), tmp_path / "k", dim=32, count=500, params=IndexParams(kind="ivfpq", pq_m=8))


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))


def test_memory_budget_shards_the_build_and_streams_the_search(tmp_path: Path) -> None:
    x, q = _data()
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    params = IndexParams(kind="exact")
    assert params.shard_size_for(64 * 1024, 32) == 512  # 128 bytes a 32-d float32 vector
    header = build_vector_index(_chunks(x), tmp_path / "idx", dim=32, count=len(x), params=params,
                                max_memory=parse_bytes("64K"))
    assert [s["count"] for s in header.shards] == [512] * 5 + [440]
    assert all((tmp_path / "idx" / s["file"]).stat().st_size < 70_000 for s in header.shards)
    whole = VectorIndex(tmp_path / "idx")
    streamed = VectorIndex(tmp_path / "idx", max_memory=100_000)  # smaller than the index: one shard at a time
    assert not whole.streaming and streamed.streaming and streamed.shards == []
    s1, i1 = whole.search_many(q, 10)
    s2, i2 = streamed.search_many(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2)
    assert _recall(i2, truth) == 1.0
    hnsw = build_vector_index(_chunks(x), tmp_path / "h", dim=32, count=len(x), params=IndexParams(kind="hnsw"),
                              max_memory=parse_bytes("200K"))
    assert len(hnsw.shards) == 6  # 4·32 + 8·32 + 16 = 400 bytes a vector: 512 a shard
    assert [parse_bytes(t) for t in ("512", "1.5K", "2M", "1GiB")] == [512, 1536, 2 * 2**20, 2**30]
    for bad in ("lots", "0", "-1G"):
        with pytest.raises(InputContractError):
            parse_bytes(bad)


@pytest.mark.parametrize("bits", [8, 4])
def test_ivfpq_refine_and_search_parameters(bits: int, tmp_path: Path) -> None:
    x, q = _data()
    exact = q @ x.T
    truth = np.argsort(-exact, axis=1)[:, :10]
    recalls = {}
    for refine in ("none", "sq8", "flat"):
        params = IndexParams(kind="ivfpq", pq_m=4, pq_bits=bits, refine=refine, nlist=16, nprobe=16, k_factor=64)
        header = build_vector_index(_chunks(x), tmp_path / refine, dim=32, count=len(x), params=params,
                                    train_vectors=x)
        assert header.factory == f"IVF16,PQ4x{'4fs' if bits == 4 else 8}" + {"none": "", "sq8": ",Refine(SQ8)",
                                                                             "flat": ",RFlat"}[refine]
        index = VectorIndex(tmp_path / refine)
        scores, ids = index.search_many(q, 10)
        recalls[refine] = _recall(ids, truth)
        if refine == "flat":  # re-ranked with the exact vectors: the scores are the exact cosines
            np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), atol=1e-5)
            index.set_search_params(nprobe=1, k_factor=1)  # one list, no re-ranking beyond k: worse
            assert _recall(index.search_many(q, 10)[1], truth) < recalls["flat"]
            reopened = VectorIndex(tmp_path / refine, nprobe=1, k_factor=1)
            assert reopened.params.nprobe == 1 and reopened.params.k_factor == 1
    assert recalls["flat"] >= 0.99 and recalls["sq8"] >= 0.95 and recalls["none"] < recalls["flat"]
    with pytest.raises(InputContractError, match="at least 1"):
        VectorIndex(tmp_path / "flat", nprobe=0)
    with pytest.raises(InputContractError, match="--refine"):
        IndexParams(kind="ivfpq", pq_m=8, refine="pq").factory(32, 100)
    with pytest.raises(InputContractError, match="--pq-bits"):
        IndexParams(kind="ivfpq", pq_m=8, pq_bits=6).factory(32, 100)


def test_hnsw_ef_search_is_applied(tmp_path: Path) -> None:
    import faiss

    x, _ = _data(1000)
    build_vector_index(_chunks(x), tmp_path / "h", dim=32, count=len(x),
                       params=IndexParams(kind="hnsw", ef_search=40), shard_size=500)
    index = VectorIndex(tmp_path / "h")
    assert {faiss.downcast_index(s).hnsw.efSearch for s in index.shards} == {40}
    index.set_search_params(ef_search=7, nprobe=3)  # nprobe means nothing to HNSW: kept, not applied
    assert {faiss.downcast_index(s).hnsw.efSearch for s in index.shards} == {7}
    assert {faiss.downcast_index(s).hnsw.efSearch for s in VectorIndex(tmp_path / "h", ef_search=9).shards} == {9}


def test_cli_build_options(tmp_path: Path, capsys) -> None:
    from medfoundry.cli.main import main

    x, _ = _data(1200)
    job = _fake_batch_output(tmp_path / "job", x)
    assert main(["index", "build", "--from-batch", str(job), "--kind", "ivfpq", "--pq-m", "8", "--pq-bits", "4",
                 "--refine", "flat", "--nlist", "8", "--nprobe", "4", "--k-factor", "8", "--train-size", "600",
                 "--max-memory", "80K", "--index", str(tmp_path / "idx")]) == 0
    assert "3 shard(s)" in capsys.readouterr().out  # 8/2 + 8 + 128 = 140 bytes a vector: 585 a shard
    head = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert head["factory"] == "IVF8,PQ8x4fs,RFlat" and head["count"] == 1200
    assert {k: head["params"][k] for k in ("nprobe", "k_factor", "refine", "pq_bits", "train_size")} == {
        "nprobe": 4, "k_factor": 8, "refine": "flat", "pq_bits": 4, "train_size": 600}
    assert main(["index", "build", "--from-batch", str(job), "--kind", "hnsw", "--max-memory", "lots",
                 "--index", str(tmp_path / "h")]) == 2


def _fake_batch_output(folder: Path, x: np.ndarray, model: str = "m", sha: str = "0" * 64) -> Path:
    (folder / "results").mkdir(parents=True)
    for part, s in enumerate(range(0, len(x), 400)):
        part_x = x[s : s + 400]
        table = pa.table({"id": [f"id{i}" for i in range(s, s + len(part_x))],
                          "source": [f"/archive/{i}.png" for i in range(s, s + len(part_x))],
                          "model": [model] * len(part_x), "weights_sha256": [sha] * len(part_x),
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(part_x.reshape(-1)), x.shape[1])})
        pa.parquet.write_table(table, folder / "results" / f"part-{part}.parquet")
    return folder


def test_from_batch_output(tmp_path: Path) -> None:
    x, _ = _data(1000)
    out = _fake_batch_output(tmp_path / "job", x)
    header = build_from_batch_output(out, tmp_path / "idx", IndexParams(kind="ivfpq", pq_m=8, nprobe=16),
                                     shard_size=600)
    assert (header.count, len(header.shards), header.model, header.dim) == (1000, 2, "m", 32)
    hit = VectorIndex(tmp_path / "idx").search(x[123], k=1)[0]
    assert hit.item == "/archive/123.png" and hit.meta["id"] == "id123"
    _fake_batch_output(tmp_path / "mixed", x[:10], model="other")
    (tmp_path / "mixed" / "results" / "part-0.parquet").rename(tmp_path / "job" / "results" / "part-9.parquet")
    with pytest.raises(InputContractError, match="mixes embeddings"):
        build_from_batch_output(out, tmp_path / "idx2", IndexParams())


@pytest.mark.slow
def test_cli_build_and_search_from_batch_job(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from medfoundry.batch.job import run_batch_job
    from medfoundry.cli.main import main

    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "m.csv").write_text("path\n" + "\n".join(f"im{i}.png" for i in range(6)) + "\n")
    run_batch_job("embed", tmp_path / "m.csv", tmp_path / "job", model="medfoundry-clip-tiny", engine="local",
                  progress=False)
    for kind in ("exact", "hnsw"):
        assert main(["index", "build", "--from-batch", str(tmp_path / "job"), "--kind", kind,
                     "--index", str(tmp_path / kind), "--max-memory", "1500"]) == 0
        assert "6 shard(s)" in capsys.readouterr().out  # 256-d: 1024 (exact) or 1296 (hnsw) bytes a vector
        assert main(["index", "search", "--index", str(tmp_path / kind), "--image", str(tmp_path / "im4.png"),
                     "-k", "3", "--json", "--max-memory", "1K", "--ef-search", "8"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert Path(hits[0]["item"]).name == "im4.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert main(["index", "build", str(tmp_path), "--kind", "hnsw", "--index", str(tmp_path / "x.npz")]) == 2


@pytest.mark.parametrize("factory", ["IVF16,PQ4x8", "IVF16,PQ4x8,Refine(SQ8)", "IVF16,PQ4x8,RFlat"])
def test_8_bit_pq_skips_polysemous_training(factory: str) -> None:
    """index_factory turns on polysemous training (seconds of annealing) for 8-bit codes, which asymmetric
    search never uses: the builder turns it off."""
    import faiss

    from medfoundry.tasks.vector_index import _skip_polysemous_training

    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(getattr(index, "base_index", index))
    assert inner.do_polysemous_training  # faiss's default, the reason for the helper
    _skip_polysemous_training(index)
    assert not inner.do_polysemous_training
