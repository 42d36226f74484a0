"""Gigapixel slides: tiffslide pyramids read at every level, tissue tiling, top-K pooling (MI-Zero) against a
direct computation, the CLI, and bad slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medfoundry.cli.main import main
from medfoundry.errors import ImageReadError, InputContractError
from medfoundry.io.slide import open_slide, write_pyramid
from medfoundry.predict.contrastive import open_contrastive
from medfoundry.tasks.slides import slide_zero_shot, tile_slide, top_k_pool

TILE = 64


def _slide(path: Path, blocks: list[tuple[int, int]], size: tuple[int, int] = (8, 12)) -> Path:
    """A 3-level pyramidal TIFF (0.5 µm/px) of ``size`` tiles, white glass with pink "tissue" on ``blocks``."""
    rng = np.random.default_rng(0)
    data = np.full((size[0] * TILE, size[1] * TILE, 3), 242, np.uint8)
    for r, c in blocks:
        tissue = np.stack([rng.normal(200, 15, (TILE, TILE)), rng.normal(110, 20, (TILE, TILE)),
                           rng.normal(170, 15, (TILE, TILE))], -1)
        data[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tissue.clip(0, 255)
    return write_pyramid(path, data, levels=3, mpp=0.5, tile=128)


BLOCKS = [(1, 2), (1, 3), (2, 2), (2, 3), (5, 9), (6, 9), (6, 10)]


def test_pyramid_levels_mpp_and_regions(tmp_path: Path) -> None:
    with open_slide(_slide(tmp_path / "s.tiff", BLOCKS)) as slide:
        assert slide.dimensions == (12 * TILE, 8 * TILE) and slide.level_count == 3
        assert slide.level_downsamples == [1.0, 2.0, 4.0] and slide.mpp == pytest.approx(0.5)
        assert slide.level_for_mpp(1.0) == 1 and slide.level_for_mpp(0.25) == 0
        region = slide.read_region((2 * TILE, TILE), 0, (TILE, TILE))
        assert region.shape == (TILE, TILE, 3) and region[..., 0].mean() > region[..., 1].mean() + 50
        assert slide.read_region((0, 0), 1, (16, 16)).min() == 242
        with pytest.raises(InputContractError):
            slide.read_region((0, 0), 3, (16, 16))


def test_tiles_cover_exactly_the_tissue(tmp_path: Path) -> None:
    with open_slide(_slide(tmp_path / "s.tiff", BLOCKS)) as slide:
        grid = tile_slide(slide, tile_size=TILE, level=0)
        assert sorted(map(tuple, grid.cells.tolist())) == sorted(BLOCKS)
        assert (grid.coords == grid.cells[:, ::-1] * TILE).all()
        coarse = tile_slide(slide, tile_size=TILE // 2, level=1)  # same tiles, one level down
        assert sorted(map(tuple, coarse.cells.tolist())) == sorted(BLOCKS)


def test_top_k_pooling_equals_a_direct_computation(tmp_path: Path) -> None:
    logits = np.array([[1.0, 0.0], [3.0, 0.5], [2.0, 4.0], [0.0, 1.0]])
    assert np.allclose(top_k_pool(logits, 2), [2.5, 2.5]) and np.allclose(top_k_pool(logits, 99), logits.mean(0))
    predictor = open_contrastive("medfoundry-clip-tiny")
    labels = ["tumor tissue", "normal tissue"]
    with open_slide(_slide(tmp_path / "s.tiff", BLOCKS)) as slide:
        result = slide_zero_shot(predictor, slide, labels, top_k=3, tile_size=TILE, batch_size=4)
        tiles = [slide.read_region(tuple(xy), 0, (TILE, TILE)) for xy in result.grid.coords]
    from medfoundry.io import MedImage
    from medfoundry.tasks.zero_shot import class_prototypes

    emb = predictor.embed_images([MedImage(t, spacing=(1.0, 1.0), photometric="RGB") for t in tiles])
    protos = class_prototypes(predictor, labels, predictor.record.templates or ["{}"])
    logits = predictor.logit_scale * emb @ protos.T
    assert np.allclose(result.tile_logits, logits, atol=1e-4)
    pooled = np.sort(logits, axis=0)[-3:].mean(0)
    assert np.allclose(result.probs, np.exp(pooled) / np.exp(pooled).sum(), atol=1e-5)
    heat = result.heatmap("tumor tissue")
    assert heat.shape == (8, 12) and np.isnan(heat[0, 0]) and 0 <= heat[1, 2] <= 1


def test_slide_cli_writes_prediction_heatmap_and_tiles(tmp_path: Path, capsys) -> None:
    path = _slide(tmp_path / "s.tiff", BLOCKS)
    args = ["slide", str(path), "--labels", "tumor,normal tissue", "--tile-size", str(TILE), "--top-k", "2",
            "--heatmap", str(tmp_path / "h.png"), "--tiles-out", str(tmp_path / "t.npz"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tiles"] == len(BLOCKS) and abs(sum(out["probs"].values()) - 1) < 1e-4
    assert (tmp_path / "h.png").stat().st_size > 500 and np.load(tmp_path / "t.npz")["logits"].shape == (7, 2)
    assert main(args) == 2  # outputs exist: refused without --overwrite, before any model work


def test_bad_slides(tmp_path: Path) -> None:
    (tmp_path / "junk.svs").write_bytes(b"not a slide at all" * 10)
    with pytest.raises(ImageReadError):
        open_slide(tmp_path / "junk.svs")
    with pytest.raises(ImageReadError):
        open_slide(tmp_path / "missing.tiff")
    with open_slide(_slide(tmp_path / "blank.tiff", [])) as slide, pytest.raises(InputContractError, match="tissue"):
        tile_slide(slide, tile_size=TILE)
    with open_slide(_slide(tmp_path / "s.tiff", BLOCKS)) as slide, pytest.raises(InputContractError):
        slide_zero_shot(open_contrastive("medfoundry-clip-tiny"), slide, ["a", "b"], top_k=0, tile_size=TILE)
