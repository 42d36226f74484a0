"""Retrieval index: search order, incremental builds, kinds, and atomic writes under failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.errors import InputContractError
from medfoundry.predict.contrastive import open_contrastive
from medfoundry.tasks.retrieval import RetrievalIndex, build_index


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def predictor():
    return open_contrastive("medfoundry-clip-tiny")


def test_build_search_and_increment(archive: Path, predictor, tmp_path: Path) -> None:
    path = tmp_path / "idx.npz"
    index, added, skipped = build_index(predictor, archive, path, texts=["a colon polyp", "normal chest x-ray"],
                                        progress=False)
    assert (added, skipped, len(index)) == (7, 1, 7)
    query = predictor.embed_images([archive / "img3.png"])[0]
    hits = RetrievalIndex.load(path).search(query, k=3, kind="image")
    assert Path(hits[0].item).name == "img3.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(h.kind == "image" for h in hits) and hits[0].score >= hits[1].score >= hits[2].score
    texts = RetrievalIndex.load(path).search(query, k=5, kind="text")
    assert {h.item for h in texts} == {"a colon polyp", "normal chest x-ray"}
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(archive / "img5.png")
    index, added, _ = build_index(predictor, archive, path, progress=False)
    assert added == 1 and len(index) == 8
    index, added, _ = build_index(predictor, None, path, texts=["normal chest x-ray", "a new report", "a new report"],
                                  progress=False)  # texts only; known and repeated texts are not added again
    assert added == 1 and len(index) == 9


def test_interrupted_build_keeps_previous_index(archive: Path, predictor, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "idx.npz"
    build_index(predictor, archive, path, progress=False)
    before = path.read_bytes()
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(archive / "img_new.png")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predictor, "embed_images", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(predictor, archive, path, progress=False)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx.npz"]
    assert len(RetrievalIndex.load(path)) > 0


def test_bad_index_files(tmp_path: Path) -> None:
    with pytest.raises(InputContractError, match="no index"):
        RetrievalIndex.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(InputContractError, match="not a medfoundry index"):
        RetrievalIndex.load(tmp_path / "bad.npz")


def test_index_cli(archive: Path, tmp_path: Path, capsys) -> None:
    idx = str(tmp_path / "cli.npz")
    assert main(["index", "build", str(archive), "--index", idx]) == 0
    assert main(["index", "search", "--index", idx, "--image", str(archive / "img1.png"), "-k", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert "img1.png" in out.split("[", 1)[1]
