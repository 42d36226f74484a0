"""Zero-shot classification of gigapixel slides, MI-Zero style: tissue tiles embedded in batches, tile–prompt
similarities pooled by top-K mean into a slide-level prediction, and the tile scores kept as a heatmap.

Lu et al., "Visual language pretrained multiple instance zero-shot transfer for histopathology images"
(CVPR 2023): each class's slide logit is the mean of its K highest tile logits; a softmax over classes gives
the slide's probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.io.slide import Slide


@dataclass
class TileGrid:
    """Tissue tiles of one slide: ``coords`` (N, 2) level-0 (x, y) of each tile's top-left corner, ``cells``
    (N, 2) (row, col) in the ``shape`` grid, ``tile_size`` pixels at ``level``, ``tissue`` (N,) fraction."""

    level: int
    tile_size: int
    shape: tuple[int, int]
    coords: np.ndarray
    cells: np.ndarray
    tissue: np.ndarray


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool foreground of an RGB thumbnail: pixels more saturated (stained tissue) or darker (greyscale
    images on a bright background) than the background, each split by Otsu's threshold. The background is
    assumed bright and unsaturated, as on glass slides."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    hsv = rgb2hsv(rgb[..., :3])
    sat, val = hsv[..., 1], hsv[..., 2]
    sat_cut = max(float(threshold_otsu(sat)), 0.05) if np.ptp(sat) > 0.05 else 1.0
    val_cut = min(float(threshold_otsu(val)), 0.9) if np.ptp(val) > 0.05 else 0.0
    return (sat > sat_cut) | (val < val_cut)


def tile_slide(slide: Slide, tile_size: int = 224, level: int = 0, min_tissue: float = 0.5,
               thumbnail_size: int = 2048) -> TileGrid:
    """The non-overlapping ``tile_size`` tiles at ``level`` holding at least ``min_tissue`` tissue (judged on
    a thumbnail). Raises InputContractError when none does."""
    if tile_size < 8:
        raise InputContractError(f"tile size {tile_size} is too small")
    width, height = slide.level_dimensions[level]
    down = slide.level_downsamples[level]
    rows, cols = height // tile_size, width // tile_size
    if rows == 0 or cols == 0:
        raise InputContractError(f"the slide's level {level} ({width}×{height}) is smaller than one tile")
    thumb = slide.thumbnail(thumbnail_size)
    mask = tissue_mask(thumb)
    sy, sx = mask.shape[0] / height, mask.shape[1] / width  # thumbnail pixels per level pixel
    tissue = np.zeros((rows, cols))
    for r in range(rows):
        y0, y1 = int(r * tile_size * sy), max(int((r + 1) * tile_size * sy), int(r * tile_size * sy) + 1)
        for c in range(cols):
            x0, x1 = int(c * tile_size * sx), max(int((c + 1) * tile_size * sx), int(c * tile_size * sx) + 1)
            tissue[r, c] = mask[y0:y1, x0:x1].mean()
    cells = np.argwhere(tissue >= min_tissue)
    if len(cells) == 0:
        raise InputContractError(f"no tile of {slide.path.name} holds ≥ {min_tissue:.0%} tissue")
    coords = np.round(cells[:, ::-1] * tile_size * down).astype(np.int64)
    return TileGrid(level, tile_size, (rows, cols), coords, cells, tissue[cells[:, 0], cells[:, 1]])


@dataclass
class SlideResult:
    """``probs`` (L,) slide-level; ``tile_logits`` (N, L) scaled tile–prompt similarities; ``grid`` the tiles."""

    labels: list[str]
    probs: np.ndarray
    tile_logits: np.ndarray
    grid: TileGrid
    top_k: int

    def heatmap(self, label: str) -> np.ndarray:
        """(rows, cols) tile probability of ``label`` (softmax over labels per tile); NaN where no tissue."""
        e = np.exp(self.tile_logits - self.tile_logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        out = np.full(self.grid.shape, np.nan)
        out[self.grid.cells[:, 0], self.grid.cells[:, 1]] = p[:, self.labels.index(label)]
        return out


def top_k_pool(tile_logits: np.ndarray, k: int) -> np.ndarray:
    """(L,) mean of the ``k`` highest tile logits of each class (k is capped at the number of tiles)."""
    k = max(1, min(int(k), len(tile_logits)))
    return np.sort(tile_logits, axis=0)[-k:].mean(axis=0)


def embed_tiles(predictor, slide: Slide, grid: TileGrid, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """(N, D) unit embeddings of the grid's tiles, read and embedded ``batch_size`` at a time."""
    from rich.progress import track

    out = []
    spacing = (slide.mpp or 1.0) / 1000.0 * slide.level_downsamples[grid.level]
    starts = range(0, len(grid.coords), batch_size)
    for start in track(starts, description="embedding tiles", disable=not progress):
        tiles = [MedImage(slide.read_region(tuple(xy), grid.level, (grid.tile_size, grid.tile_size)),
                          spacing=(spacing, spacing), photometric="RGB", modality="SM")
                 for xy in grid.coords[start : start + batch_size]]
        out.append(predictor.embed_images(tiles))
    return np.concatenate(out)


def slide_zero_shot(predictor, slide: Slide, labels: Sequence[str], *, templates: Sequence[str] | None = None,
                    top_k: int = 50, tile_size: int = 224, level: int = 0, min_tissue: float = 0.5,
                    batch_size: int = 32, progress: bool = False) -> SlideResult:
    """Zero-shot slide classification with top-K pooling over tissue tiles (see the module doc)."""
    from medfoundry.tasks.zero_shot import _softmax, check_labels, class_prototypes

    labels = check_labels(labels)
    if top_k < 1:
        raise InputContractError(f"top_k must be ≥ 1 (got {top_k})")
    grid = tile_slide(slide, tile_size, level, min_tissue)
    emb = embed_tiles(predictor, slide, grid, batch_size, progress)
    protos = class_prototypes(predictor, labels, list(templates or predictor.record.templates or ("{}",)))
    tile_logits = predictor.logit_scale * emb @ protos.T
    return SlideResult(labels, _softmax(top_k_pool(tile_logits, top_k)), tile_logits, grid, min(top_k, len(emb)))


def heatmap_overlay(slide: Slide, result: SlideResult, label: str, size: int = 1024) -> np.ndarray:
    """RGB thumbnail with the tile probability of ``label`` blended in (background tiles left as they are)."""
    from PIL import Image

    from medfoundry.viz import colormap

    thumb = slide.thumbnail(size)
    heat = result.heatmap(label)
    width, height = slide.level_dimensions[result.grid.level]
    rows, cols = heat.shape
    covered = (round(cols * result.grid.tile_size / width * thumb.shape[1]),
               round(rows * result.grid.tile_size / height * thumb.shape[0]))
    colour = colormap(np.nan_to_num(heat))
    alpha = np.where(np.isnan(heat), 0.0, 0.5)
    colour = np.asarray(Image.fromarray(colour).resize(covered, Image.NEAREST), np.float32)
    alpha = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).resize(covered, Image.NEAREST)) / 255.0
    out = thumb.astype(np.float32)
    h, w = min(covered[1], out.shape[0]), min(covered[0], out.shape[1])
    out[:h, :w] = (1 - alpha[:h, :w, None]) * out[:h, :w] + alpha[:h, :w, None] * colour[:h, :w]
    return out.clip(0, 255).astype(np.uint8)
