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
