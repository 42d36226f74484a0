"""The segment route's fast path: one segmentation flow (:func:`medfoundry.tasks.segmentation.segment`) run on
one worker thread with its own PyTorch thread count, and measurements from boundary pixels only (the same
numbers as from every pixel, without sorting every pixel corner)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from medfoundry.tasks.measure import boundary, diameters


def _diameters_every_pixel(mask2d: np.ndarray, spacing: tuple[float, float]) -> tuple[float, list[float]]:
    """The former implementation: the hull of the corners of every mask pixel (the reference)."""
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(mask2d)
    if ys.size == 0:
        return 0.0, []
    dy, dx = spacing
    corners = np.concatenate([np.stack([xs + ox, ys + oy], 1) for ox in (0, 1) for oy in (0, 1)]).astype(float)
    pts = np.unique(corners * [dx, dy], axis=0)
    if len(pts) > 3:
        with contextlib.suppress(Exception):  # collinear: every point stays
            pts = pts[ConvexHull(pts).vertices]
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    long_axis = float(dist.max())
    if long_axis == 0:
        return 0.0, []
    # the short axis over every longest pair (ties are broken by the hull's order, which differs)
    widths = []
    for i, j in zip(*np.nonzero(np.isclose(dist, long_axis)), strict=True):
        d = (pts[j] - pts[i]) / long_axis
        proj = pts @ np.array([-d[1], d[0]])
        widths.append(float(proj.max() - proj.min()))
    return long_axis, widths


def _blobs(seed: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5)  # some reach past the edge
        ry, rx = rng.uniform(1, 20, 2)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


@pytest.mark.parametrize("seed", range(30))
def test_diameters_from_boundary_pixels_equal_those_from_every_pixel(seed: int) -> None:
    mask = _blobs(seed)
    spacing = (0.7, 1.3) if seed % 2 else (1.0, 1.0)
    long_axis, short_axis = diameters(mask, spacing)
    ref_long, ref_shorts = _diameters_every_pixel(mask, spacing)
    assert long_axis == pytest.approx(ref_long, abs=1e-9)
    if ref_long:
        assert any(short_axis == pytest.approx(w, abs=1e-9) for w in ref_shorts)


@pytest.mark.parametrize("mask", [np.zeros((5, 5), bool), np.eye(6, dtype=bool), np.ones((1, 1), bool),
                                  np.ones((4, 9), bool)], ids=["empty", "diagonal", "one-pixel", "full-image"])
def test_diameters_on_degenerate_masks(mask: np.ndarray) -> None:
    ref_long, ref_shorts = _diameters_every_pixel(mask, (1.0, 1.0))
    long_axis, short_axis = diameters(mask, (1.0, 1.0))
    assert long_axis == pytest.approx(ref_long)
    assert short_axis == pytest.approx(0.0) if not ref_long else any(short_axis == pytest.approx(w)
                                                                      for w in ref_shorts)


def test_boundary_is_four_neighbour_erosion() -> None:
    from scipy.ndimage import binary_erosion

    for seed in range(10):
        mask = _blobs(seed)
        np.testing.assert_array_equal(boundary(mask), mask & ~binary_erosion(mask, border_value=0))


pytest.importorskip("fastapi")


def _polyp() -> np.ndarray:
    arr = np.random.default_rng(0).integers(0, 60, (160, 200, 3), dtype=np.uint8)
    arr[40:120, 50:150] = (230, 120, 110)
    return arr


def test_segment_clicks_run_the_flow_on_one_worker_thread(tmp_path, monkeypatch) -> None:
    """Concurrent clicks all go through tasks.segmentation.segment, on the worker thread, one at a time, with
    the worker's PyTorch thread count; the answer equals the flow's, measurements included."""
    import io

    import torch
    from PIL import Image

    import medfoundry.tasks.segmentation as flow
    from medfoundry.serve.workbench import Workbench

    calls: list[tuple[str, int]] = []
    running = [0, 0]  # now, most at once
    guard = threading.Lock()
    original = flow.segment

    def spy(*args, **kwargs):
        with guard:
            running[0] += 1
            running[1] = max(running)
            calls.append((threading.current_thread().name, torch.get_num_threads()))
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(flow, "segment", spy)
    bench = Workbench(store=tmp_path / "store", seg_threads=1)
    try:
        buf = io.BytesIO()
        Image.fromarray(_polyp()).save(buf, format="PNG")
        buf.seek(0)
        stored = bench.add_upload(buf, "polyp.png")
        box = [45.0, 35.0, 155.0, 125.0]
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(lambda k: bench.segment(stored.id, box, [[100.0 + k, 80.0, 1]]), range(6)))
        assert len(calls) == 6 and running[1] == 1
        assert all(name.startswith("medfoundry-seg") and n == 1 for name, n in calls), calls
        seg = bench.predictor("segmentation")
        np.testing.assert_array_equal(stored.image.array, _polyp())
        for k, out in enumerate(outs):
            ref = original(seg, stored.image, [box], [[100.0 + k, 80.0, 1]])
            np.testing.assert_array_equal(out["mask"], ref.mask)
            assert out["measurement"] == ref.measurement
    finally:
        bench.close()


def test_seg_threads_and_decoder_precision_are_checked(tmp_path) -> None:
    from medfoundry.errors import InputContractError
    from medfoundry.serve.workbench import Workbench

    with pytest.raises(InputContractError, match="seg_threads"):
        Workbench(store=tmp_path / "a", seg_threads=0)
    with pytest.raises(InputContractError, match="decoder precision"):
        Workbench(store=tmp_path / "b", seg_decoder_precision="fp8")


def test_two_workers_segment_the_same_image_side_by_side(tmp_path) -> None:
    """``seg_workers=2``: each worker thread gets its own segmenter (the loaded one, then a second copy), clicks on
    one image run concurrently, and every mask equals what one worker computes for the same prompt."""
    import io

    from PIL import Image

    from medfoundry.serve.workbench import Workbench

    yy, xx = np.mgrid[0:160, 0:192]
    arr = np.where(((yy - 80) / 40.0) ** 2 + ((xx - 90) / 55.0) ** 2 <= 1, 210, 40).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(arr[..., None], 3, -1)).save(buf, format="PNG")
    boxes = [[30.0 + d, 36.0, 150.0 - d, 124.0] for d in range(0, 16, 2)]
    single = Workbench(store=tmp_path / "one")
    try:
        stored = single.add_upload(io.BytesIO(buf.getvalue()), "ellipse.png")
        expected = [single.segment(stored.id, b)["mask"] for b in boxes]
    finally:
        single.close()
    bench = Workbench(store=tmp_path / "two", seg_workers=2)
    opened = []
    real_open = bench._open_segmenter
    bench._open_segmenter = lambda: opened.append(1) or real_open()  # type: ignore[method-assign]
    try:
        stored = bench.add_upload(io.BytesIO(buf.getvalue()), "ellipse.png")
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda b: bench.segment(stored.id, b)["mask"], boxes))
        for got, want in zip(results, expected, strict=True):
            np.testing.assert_array_equal(got, want)
        assert len(opened) == 2  # the loaded segmenter and the second worker's
    finally:
        bench.close()
    with pytest.raises(Exception, match="seg_workers"):
        Workbench(store=tmp_path / "bad", seg_workers=0)
    pooled = Workbench(store=tmp_path / "pooled", seg_embed_pool=2)  # `serve --embed-pool 2`
    try:
        stored = pooled.add_upload(io.BytesIO(buf.getvalue()), "ellipse.png")
        coarse = pooled.segment(stored.id, boxes[0])["mask"]
        assert pooled.predictor("segmentation").model.config.embed_pool == 2
        assert (coarse & expected[0]).sum() / (coarse | expected[0]).sum() > 0.9
    finally:
        pooled.close()
    with pytest.raises(Exception, match="seg_embed_pool"):
        Workbench(store=tmp_path / "bad", seg_embed_pool=3)
