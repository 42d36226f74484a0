"""Box3DNet and its predictor: the patch geometry both ways, the prompt channel, the input checks, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.eval.baselines import dice
from medfoundry.io.image import MedImage
from medfoundry.models.box3d import Box3DConfig, Box3DNet
from medfoundry.predict.box3d import (
    Box3DContract,
    Box3DSegmenter,
    keep_prompted_part,
    load_box3d,
    logits_to_volume,
    normalised,
    patch_input,
    sample,
)
from medfoundry.predict.boxes import mask_box
from medfoundry.registry.records import ModelRecord

SMALL = Box3DContract(grid=(16, 32, 32))


def _ellipsoid(shape=(24, 80, 96), centre=(11, 38, 50), radii_mm=(20.0, 14.0, 18.0), spacing=(3.0, 0.8, 0.7)):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    q = (((grid - centre) * spacing / radii_mm) ** 2).sum(-1)
    return q <= 1


def _record(contract: Box3DContract = SMALL, features=(2, 2, 4, 4, 8, 2)) -> ModelRecord:
    return ModelRecord(name="tiny-box3d", arch="box3d", family="VPM-adaptation", tasks=("segmentation-3d",),
                       modalities=("CT",), license="test", commercial_use=False, paper="test", training_data="none",
                       arch_config={"features": list(features), "grid": list(contract.grid),
                                    "contract": {"context": contract.context,
                                                 "depth_context": contract.depth_context}})


def test_patch_and_back_reproduce_an_object_on_an_anisotropic_grid() -> None:
    mask = _ellipsoid()
    spacing = (3.0, 0.8, 0.7)
    key = int(mask.sum((1, 2)).argmax())
    box = mask_box(mask[key])
    contract = Box3DContract(grid=(32, 64, 64))
    x, coords = patch_input(mask.astype(np.float32), mask.shape, spacing, key, box, contract)
    assert x.shape == (2, 32, 64, 64)
    target = sample(mask.astype(np.float32), coords)
    assert 0.02 < float(target.mean()) < 0.5  # the object is inside the patch, with context around it
    back = logits_to_volume(target * 20 - 10, mask.shape, spacing, key, box, contract) > 0
    assert dice(back, mask) > 0.95
    # a shifted key slice moves the patch: the same object still comes back
    back2 = logits_to_volume(sample(mask.astype(np.float32), patch_input(
        mask.astype(np.float32), mask.shape, spacing, key + 1, box, contract)[1]) * 20 - 10,
        mask.shape, spacing, key + 1, box, contract) > 0
    assert dice(back2, mask) > 0.9


def test_prompt_channel_is_the_box_on_the_central_slices() -> None:
    mask = _ellipsoid()
    key = int(mask.sum((1, 2)).argmax())
    box = mask_box(mask[key])
    x, _ = patch_input(np.zeros(mask.shape, np.float32), mask.shape, (3.0, 0.8, 0.7), key, box, SMALL)
    prompt = x[1]
    slices = torch.nonzero(prompt.sum((1, 2)))[:, 0].tolist()
    assert slices == [7, 8]  # the two patch slices either side of the key slice
    # the box spans 1 / context of the patch's width along its longer side
    cols = torch.nonzero(prompt[7].sum(0))[:, 0]
    assert abs((cols.max() - cols.min() + 1).item() / 32 - 1 / SMALL.context) < 0.1


def test_normalised_uses_the_window_for_hu_and_percentiles_otherwise() -> None:
    a = np.linspace(-1000, 1000, 24 * 8 * 8, dtype=np.float32).reshape(24, 8, 8)
    hu = normalised(MedImage(array=a, spacing=(1, 1, 1), units="HU"), SMALL)
    assert hu.min() == 0 and hu.max() == 1
    np.testing.assert_allclose(hu, np.clip((a + 160) / 400, 0, 1), atol=1e-6)  # soft-tissue window -160..240 HU
    raw = normalised(MedImage(array=a, spacing=(1, 1, 1)), SMALL)
    assert raw.min() == 0 and raw.max() == 1 and 0.4 < raw.mean() < 0.6


def test_keep_prompted_part_keeps_the_object_at_the_box() -> None:
    m = np.zeros((6, 20, 20), bool)
    m[1:4, 2:6, 2:6] = True  # small object at the box
    m[0:6, 10:19, 10:19] = True  # larger one elsewhere
    out = keep_prompted_part(m, 2, np.array([1, 1, 7, 7]))
    assert out[2, 3, 3] and not out[2, 15, 15]
    assert keep_prompted_part(m, 2, np.array([0, 0, 1, 1]))[2, 15, 15]  # no hit: the largest part


def test_segmenter_returns_a_mask_on_the_volume_grid_and_refuses_bad_prompts() -> None:
    torch.manual_seed(0)
    record = _record()
    seg = load_box3d(record, Box3DNet(Box3DConfig.from_dict({"features": [2, 2, 4, 4, 8, 2],
                                                              "grid": [16, 32, 32]})).state_dict())
    assert isinstance(seg, Box3DSegmenter) and seg.volume_only
    vol = MedImage(array=np.where(_ellipsoid(), 50.0, -100.0).astype(np.float32), spacing=(3.0, 0.8, 0.7),
                   units="HU", modality="CT")
    out = seg.segment_3d(vol, 11, np.array([30.0, 20.0, 70.0, 56.0]))
    assert out.shape == vol.array.shape and out.dtype == bool
    for kwargs, match in (({"box": None}, "needs a box"), ({"box": np.array([0, 0, 200, 10.0])}, "outside"),
                          ({"box": np.array([30, 20, 30, 56.0])}, "x0 < x1"),
                          ({"box": np.array([30, 20, 70, 56.0]), "points": np.array([[40, 30]])}, "not by points"),
                          ({"box": np.array([30, 20, 70, 56.0]), "key": 24}, "outside the volume")):
        key = kwargs.pop("key", 11)
        with pytest.raises(InputContractError, match=match):
            seg.segment_3d(vol, key, kwargs["box"], kwargs.get("points"))
    one = MedImage(array=np.zeros((1, 80, 96), np.float32), spacing=(3.0, 0.8, 0.7))
    with pytest.raises(InputContractError):
        seg.segment_3d(one, 0, np.array([30.0, 20.0, 70.0, 56.0]))


def test_weights_that_do_not_fit_are_a_weights_error() -> None:
    state = Box3DNet(Box3DConfig(features=(2, 2, 4, 4, 8, 2), grid=(16, 32, 32))).state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(WeightsError, match="do not fit"):
        load_box3d(_record(), state)
    with pytest.raises(InputContractError, match="multiples of 16"):
        Box3DNet(Box3DConfig(grid=(10, 32, 32)))
    with pytest.raises(InputContractError, match=r"\(B, 2, D, H, W\)"):
        Box3DNet(Box3DConfig(features=(2, 2, 4, 4, 8, 2), grid=(16, 32, 32)))(torch.zeros(1, 1, 16, 32, 32))
    with pytest.raises(InputContractError, match="unknown Box3DNet settings"):
        Box3DConfig.from_dict({"features": [2, 2, 4, 4, 8, 2], "depth": 3})


def test_loaded_weights_name_the_state_actually_loaded() -> None:
    state = Box3DNet(Box3DConfig(features=(2, 2, 4, 4, 8, 2), grid=(16, 32, 32))).state_dict()
    seg = load_box3d(_record(), state)
    from medfoundry.eval.provenance import collect

    assert collect(seg)["weights_sha256"] == seg.loaded_weights.sha256 and len(seg.loaded_weights.sha256) == 64


def test_the_embedded_model_loads_offline_and_finds_a_ball_from_one_box() -> None:
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.segmentation import segment

    seg = open_segmenter("medfoundry-box3d-tiny")
    assert seg.record.embedded and seg.loaded_weights.sha256 == seg.record.weights[0].sha256
    zz, yy, xx = np.mgrid[0:30, 0:96, 0:96]
    ball = ((zz - 15) * 3.0) ** 2 + ((yy - 48) * 0.8) ** 2 + ((xx - 44) * 0.8) ** 2 <= 25.0**2
    ct = np.where(ball, 45.0, 0.0) + np.where(((yy - 48) * 0.8) ** 2 + ((xx - 44) * 0.8) ** 2 <= 34**2, 0, -100.0)
    vol = MedImage(array=(ct + np.random.default_rng(0).normal(0, 8, ct.shape)).astype(np.float32),
                   spacing=(3.0, 0.8, 0.8), units="HU", modality="CT")
    outcome = segment(seg, vol, [mask_box(ball[15])], slice_index=15, propagate=True)
    assert dice(outcome.mask, ball) > 0.75


def test_every_way_in_gives_the_box3d_segmenter_or_a_typed_error(tmp_path) -> None:
    from medfoundry.predict.segment import load_segmenter, open_segmenter
    from medfoundry.registry import get_record
    from medfoundry.registry.loading import fetch_weights

    record, weights = fetch_weights("medfoundry-box3d-tiny")
    assert record == get_record("medfoundry-box3d-tiny")
    assert isinstance(load_segmenter(record, weights), Box3DSegmenter)
    with pytest.raises(InputContractError, match="no ONNX export"):
        open_segmenter("medfoundry-box3d-tiny", onnx=tmp_path)
    with pytest.raises(InputContractError, match="do not apply"):
        open_segmenter("medfoundry-box3d-tiny", tta="logits")
