"""Batch jobs: outputs equal the single-process predictors', bad items land in the errors table, resume, full disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="batch jobs need pyarrow (pip install 'medfoundry[batch]')")
pytest.importorskip("pycocotools", reason="segment outputs need pycocotools (pip install 'medfoundry[batch]')")

from medfoundry.batch.job import BatchJobError, done_ids, run_batch_job  # noqa: E402
from medfoundry.batch.manifest import read_manifest  # noqa: E402
from medfoundry.batch.workers import BatchWorker, rle_decode  # noqa: E402
from medfoundry.errors import InputContractError  # noqa: E402

MODEL = "medfoundry-clip-tiny"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """5 good images (one a 3-slice .npy volume), a corrupt PNG; a manifest that also names a missing file and
    repeats a good one."""
    folder = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(4):
        disc = (yy - 30 - i) ** 2 + (xx - 28 - 2 * i) ** 2 < (10 + i) ** 2
        pixels = np.where(disc, 200, 40) + rng.integers(0, 30, (64, 64))
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i}.png")
    np.save(folder / "vol.npy", rng.normal(0, 100, (3, 40, 40)).astype(np.float32))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = ["path,slice", *[f"img{i}.png," for i in range(4)], "vol.npy,1", "bad.png,", "missing.png,", "img2.png,"]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def predictor():
    from medfoundry.predict.contrastive import open_contrastive

    return open_contrastive(MODEL)


def _table(out: Path, sub: str):
    files = sorted((out / sub).glob("*.parquet"))
    return pa.concat_tables([pa.parquet.read_table(f) for f in files]) if files else None


def _check_embed_outputs(out: Path, archive: Path, predictor) -> None:
    from medfoundry.io import read_image

    results = _table(out, "results").to_pylist()
    assert sorted(Path(r["source"]).name for r in results) == ["img0.png", "img1.png", "img2.png", "img3.png",
                                                               "vol.npy"]
    for r in results:
        image = read_image(r["source"])
        image = image.slice(1) if image.is_volume else image
        expected = predictor.embed_images([image])[0]  # the single-process predictor, one image at a time
        np.testing.assert_allclose(np.asarray(r["embedding"], np.float32), expected, atol=1e-5)
        assert r["model"] == MODEL and len(r["weights_sha256"]) == 64
    assert next(r for r in results if r["source"].endswith("vol.npy"))["slice"] == 1
    errors = {Path(e["source"]).name: e for e in _table(out, "errors").to_pylist()}
    assert set(errors) == {"bad.png", "missing.png", "img2.png"}
    assert errors["bad.png"]["error_type"] == "read:ImageReadError" and "not a readable image" in errors["bad.png"][
        "error"]
    assert "no such file" in errors["missing.png"]["error"]
    assert errors["img2.png"]["error_type"] == "manifest:Duplicate" and "duplicate of row 2" in errors["img2.png"][
        "error"]


@pytest.mark.slow
def test_ray_two_workers_equal_single_process_and_resume(archive: Path, predictor, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray engine needs ray (pip install 'medfoundry[batch]')")
    out = tmp_path / "out"
    ray_init = {"num_cpus": 2, "object_store_memory": 80 * 2**20}
    summary = run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, workers=2, batch_size=2,
                            shard_rows=3, threads_per_worker=1, progress=False, ray_init=ray_init)
    assert (summary.processed, summary.succeeded, summary.failed, summary.duplicates) == (7, 5, 2, 1)
    _check_embed_outputs(out, archive, predictor)
    shards = sorted(p.name for p in out.rglob("*.parquet"))
    again = run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, workers=2, progress=False,
                          ray_init=ray_init)
    assert (again.processed, again.duplicates, again.shards, again.already_done) == (0, 0, [], 7)
    assert sorted(p.name for p in out.rglob("*.parquet")) == shards  # the second run wrote nothing


def test_local_engine_same_outputs(archive: Path, predictor, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, engine="local", batch_size=3,
                            progress=False)
    assert (summary.succeeded, summary.failed, summary.duplicates) == (5, 2, 1)
    _check_embed_outputs(out, archive, predictor)


def test_killed_half_way_resumes(archive: Path, tmp_path: Path, monkeypatch) -> None:
    out, calls = tmp_path / "out", {"n": 0}
    original = BatchWorker.process

    def dies_on_third_batch(self, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the job is killed while the third batch runs
        return original(self, rows)

    monkeypatch.setattr(BatchWorker, "process", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, engine="local", batch_size=2,
                      shard_rows=2, progress=False)
    kept = done_ids(out)
    assert len(kept) >= 4  # two batches of 2 (+ the duplicate) were written before the kill
    monkeypatch.setattr(BatchWorker, "process", original)
    summary = run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, engine="local", batch_size=2,
                            progress=False)
    assert summary.already_done == len([i for i in kept if "#row" not in i])
    assert summary.processed == 7 - summary.already_done and summary.duplicates == 0
    assert len(_table(out, "results")) == 5 and len(_table(out, "errors")) == 3  # each item exactly once


def test_full_disk_keeps_written_shards(archive: Path, tmp_path: Path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    out, real_write, writes = tmp_path / "out", pq.write_table, {"n": 0}

    def full_after_one(table, where, *args, **kwargs):
        writes["n"] += 1
        if writes["n"] >= 2:  # the disk is full from the second shard on
            raise OSError(28, "No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_after_one)
    with pytest.raises(BatchJobError, match=r"No space left on device.*1 shards written before it"):
        run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, engine="local", batch_size=2,
                      shard_rows=2, progress=False)
    assert len(list((out / "results").glob("*.parquet"))) + len(list((out / "errors").glob("*.parquet"))) == 1
    assert not list(out.rglob(".*.tmp"))  # no partial shard
    monkeypatch.setattr(pq, "write_table", real_write)
    again = run_batch_job("embed", archive / "manifest.csv", out, model=MODEL, engine="local", progress=False)
    assert again.already_done + again.processed == 7  # what the full disk stopped is done now, the rest kept
    assert len(_table(out, "results")) == 5 and len(_table(out, "errors")) == 3  # each item exactly once


def test_manifest_and_job_checks(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("file\nimg0.png\n")
    with pytest.raises(InputContractError, match="needs a 'path'"):
        read_manifest(bad, "embed")
    with pytest.raises(InputContractError, match="'boxes' or a 'points' column"):
        read_manifest(archive / "manifest.csv", "segment")
    with pytest.raises(InputContractError, match="no manifest"):
        read_manifest(tmp_path / "nope.csv", "embed")
    with pytest.raises(InputContractError, match="classify needs"):
        run_batch_job("classify", archive / "manifest.csv", tmp_path / "o", model=MODEL, engine="local")
    out = tmp_path / "out"
    run_batch_job("classify", archive / "manifest.csv", out, model=MODEL, engine="local", labels=["a", "b"],
                  progress=False)
    with pytest.raises(InputContractError, match="another job"):  # other labels into the same folder
        run_batch_job("classify", archive / "manifest.csv", out, model=MODEL, engine="local", labels=["a", "c"])


def test_classify_equals_zero_shot(archive: Path, predictor, tmp_path: Path) -> None:
    from medfoundry.tasks.zero_shot import zero_shot_classify

    (tmp_path / "m.csv").write_text(f"path,labels\n{archive / 'img0.png'},\n{archive / 'img1.png'},\"x ray,ct scan\"\n")
    run_batch_job("classify", tmp_path / "m.csv", tmp_path / "out", model=MODEL, engine="local",
                  labels=["endoscopy", "ct scan", "mri"], progress=False)
    rows = {Path(r["source"]).name: r for r in _table(tmp_path / "out", "results").to_pylist()}
    for name, labels in (("img0.png", ["endoscopy", "ct scan", "mri"]), ("img1.png", ["x ray", "ct scan"])):
        ref = zero_shot_classify(predictor, [archive / name], labels)
        assert rows[name]["labels"] == labels
        np.testing.assert_allclose(rows[name]["scores"], ref.probs[0], atol=1e-5)
        assert rows[name]["prediction"] == ref.top(0)[0]


def test_segment_equals_segmenter(archive: Path, tmp_path: Path) -> None:
    from medfoundry.io import read_image
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.measure import measure

    (tmp_path / "m.csv").write_text(f"path,boxes,points\n{archive / 'img0.png'},\"14,14,46,46\",\n"
                                    f"{archive / 'img1.png'},,\"30,30,1\"\n{archive / 'img2.png'},\"50,50,10,10\",\n")
    summary = run_batch_job("segment", tmp_path / "m.csv", tmp_path / "out", model="medfoundry-sam-lite",
                            engine="local", progress=False)
    assert (summary.succeeded, summary.failed) == (2, 1)
    assert "inverted" in _table(tmp_path / "out", "errors").column("error")[0].as_py()
    segmenter = open_segmenter("medfoundry-sam-lite")
    for r in _table(tmp_path / "out", "results").to_pylist():
        image = read_image(r["source"])
        segmenter.set_image(image)
        if r["source"].endswith("img0.png"):
            ref = segmenter.predict(boxes=np.array([[14, 14, 46, 46]], np.float32)).best().any(axis=0)
        else:
            ref = segmenter.predict(points=np.array([[30, 30]], np.float32), point_labels=np.array([1])).best().any(0)
        mask = rle_decode(r["mask_rle"], tuple(r["mask_shape"]))
        assert ref.sum() > 0 and np.array_equal(mask, ref)
        sizes = measure(ref, image)
        assert r["pixels"] == sizes.pixels and r["area_mm2"] == pytest.approx(sizes.area_mm2)


def test_bad_manifests_and_bad_rows(archive: Path, tmp_path: Path, capsys) -> None:
    """Missing columns or rows stop the job before any work (exit code 2 from the CLI); bad rows (an empty path,
    a folder that is no image, a slice that does not exist, a repeated id) each get their reason in the errors
    table, and the good row is processed."""
    from medfoundry.cli.main import main

    pa.parquet.write_table(pa.table({"file": [str(archive / "img0.png")]}), tmp_path / "nopath.parquet")
    with pytest.raises(InputContractError, match=r"needs a 'path'.*has file"):
        read_manifest(tmp_path / "nopath.parquet", "embed")
    (tmp_path / "empty.csv").write_text("path,slice\n")
    with pytest.raises(InputContractError, match="no rows"):
        read_manifest(tmp_path / "empty.csv", "embed")
    assert main(["batch", "embed", "--manifest", str(tmp_path / "nopath.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert "needs a 'path'" in capsys.readouterr().err and not (tmp_path / "o").exists()

    (tmp_path / "not_an_image").mkdir()
    rows = [("a", archive / "img0.png", ""), ("a", archive / "img1.png", ""), ("b", "", ""),
            ("c", tmp_path / "not_an_image", ""), ("d", archive / "img0.png", "2"), ("e", archive / "vol.npy", "9")]
    (tmp_path / "m.csv").write_text("id,path,slice\n" + "".join(f"{i},{p},{s}\n" for i, p, s in rows))
    summary = run_batch_job("embed", tmp_path / "m.csv", tmp_path / "out", model=MODEL, engine="local",
                            progress=False)
    assert (summary.succeeded, summary.failed, summary.duplicates) == (1, 4, 1)
    assert _table(tmp_path / "out", "results").column("id").to_pylist() == ["a"]
    errors = {e["id"]: e for e in _table(tmp_path / "out", "errors").to_pylist()}
    assert errors["a#row1"]["error_type"] == "manifest:Duplicate" and "duplicate of row 0" in errors["a#row1"]["error"]
    assert errors["b"]["error"] == "empty path"
    assert errors["c"]["error_type"].startswith("read:") and errors["c"]["source"].endswith("not_an_image")
    assert "2D image" in errors["d"]["error"] and "outside the volume's 3 slices" in errors["e"]["error"]
