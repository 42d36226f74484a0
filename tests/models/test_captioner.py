"""The prefix captioner: loss, greedy streaming, saving only the trained parts, and a tiny training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.models.captioner import (
    CaptionerConfig,
    build_captioner,
    load_language_model,
    save_captioner,
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from tiny_causal_lm import tiny_language_model

    return tiny_language_model(tmp_path_factory.mktemp("tiny_lm"))


def _model(folder: Path, rank: int = 4):
    lm, tok = load_language_model(f"local-dir:{folder}")
    config = CaptionerConfig(feature_dim=8, prefix_tokens=2, lm_hidden=32, projector_hidden=16, lora_rank=rank,
                             language_model=f"local-dir:{folder}")
    return build_captioner(config, lm), tok


def test_loss_streaming_and_round_trip(tiny_lm: Path, tmp_path: Path) -> None:
    model, _tok = _model(tiny_lm)
    ids = torch.tensor([[3, 4, 1], [5, 1, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss = model(torch.randn(2, 8), ids, mask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("projector" in n or "lora_" in n for n in trainable)
    feats = torch.randn(1, 8)
    first = list(model.stream(feats, 6, eos_token_id=None))
    assert len(first) == 6 and first == list(model.stream(feats, 6, eos_token_id=None))  # greedy: reproducible
    assert list(model.stream(feats, 6, eos_token_id=None, should_stop=lambda: True)) == first[:1]
    with torch.no_grad():  # perturb the trained parts, save, reload: the same tokens
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    expected = list(model.stream(feats, 6, eos_token_id=None))
    folder = save_captioner(model, tmp_path / "cap")
    assert sorted(f.name for f in folder.iterdir()) == ["adapter.safetensors", "config.json"]
    again, _ = _model(tiny_lm)
    from safetensors.torch import load_file

    again.load_trained_state(load_file(str(folder / "adapter.safetensors")))
    assert list(again.eval().stream(feats, 6, eos_token_id=None)) == expected


def test_bad_inputs(tiny_lm: Path) -> None:
    model, _ = _model(tiny_lm, rank=0)
    with pytest.raises(InputContractError):
        list(model.stream(torch.randn(2, 8), 4, None))
    with pytest.raises(InputContractError):
        list(model.stream(torch.randn(1, 8), 0, None))
    with pytest.raises(WeightsError):
        model.load_trained_state({})
    lm, _ = load_language_model(f"local-dir:{tiny_lm}")
    with pytest.raises(WeightsError, match="hidden size"):
        build_captioner(CaptionerConfig(feature_dim=8, lm_hidden=64), lm)
    with pytest.raises(WeightsError):
        load_language_model("gpt-unknown")


def test_training_lowers_the_loss_and_resumes(tiny_lm: Path, tmp_path: Path) -> None:
    from medfoundry.train.captioner import CaptionTrainConfig, train_on_features

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(8, 8)).astype(np.float32)
    texts = ["axial ct of the head . lesion", "coronal mri of the spine . normal"] * 4
    feats[1::2] += 2.0  # two kinds of images, two kinds of captions
    lm, tok = load_language_model(f"local-dir:{tiny_lm}")
    config = CaptionTrainConfig(shared="", out=str(tmp_path / "run"), steps=30, batch_size=4, lr=1e-2, warmup=2,
                                prefix_tokens=2, lora_rank=4, checkpoint_every=10,
                                language_model=f"local-dir:{tiny_lm}")
    out = train_on_features(config, feats, texts, lm, tok, log=lambda _: None)
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.15
    assert (out / "adapter.safetensors").is_file()
    config.steps = 35  # resumes from the step-30 checkpoint
    lm2, _ = load_language_model(f"local-dir:{tiny_lm}")
    train_on_features(config, feats, texts, lm2, tok, log=lambda _: None)
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 35


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_no_repeat_ngram_blocks_the_loops_of_greedy_decoding(tiny_lm: Path) -> None:
    model, _ = _model(tiny_lm)
    feats = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    free = list(model.stream(feats, 40, eos_token_id=None, no_repeat_ngram=0))
    assert len(set(_ngrams(free, 2))) < len(_ngrams(free, 2))  # unblocked greedy decoding of this LM loops
    blocked = list(model.stream(feats, 40, eos_token_id=None, no_repeat_ngram=2))
    assert len(blocked) == 40 and len(set(_ngrams(blocked, 2))) == len(_ngrams(blocked, 2))
    assert blocked == list(model.stream(feats, 40, eos_token_id=None, no_repeat_ngram=2))  # still deterministic
    assert model.config.no_repeat_ngram == 3  # the default the embedded captioner decodes with
    assert list(model.stream(feats, 40, eos_token_id=None)) == list(model.stream(feats, 40, None, None, 3))
    with pytest.raises(InputContractError, match="no_repeat_ngram"):
        list(model.stream(feats, 4, None, no_repeat_ngram=-1))


def test_training_defaults_are_the_shipped_recipe() -> None:
    import json
    from dataclasses import asdict

    import medfoundry
    from medfoundry.train.captioner import CaptionTrainConfig

    shipped = json.loads((Path(medfoundry.__file__).parent / "weights" / "medfoundry-captioner-tiny" /
                          "train_config.json").read_text())
    defaults = asdict(CaptionTrainConfig(shared=shipped["shared"], out=shipped["out"]))
    assert defaults == shipped  # `medfoundry train captioner --shared ... --out ...` retrains the shipped model
    from medfoundry.cli.main import build_parser

    args = vars(build_parser().parse_args(["train", "captioner", "--shared", "s", "--out", "o"]))
    assert {k: args[k] for k in defaults if k not in ("shared", "out")} == {
        k: v for k, v in defaults.items() if k not in ("shared", "out")}  # the CLI's defaults are the same
