"""CONCH runs through its own package (conch-fork) and matches ``create_model_from_pretrained``.

The test builds CONCH's network at a tiny width (the published config with fewer, narrower layers), saves its
random weights as CONCH is published (a ``pytorch_model.bin`` state dict) and compares medfoundry's embeddings
and preprocessing with the package's own model and transform.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.predict.contrastive import load_contrastive
from medfoundry.registry import get_record

occ = pytest.importorskip("conch.open_clip_custom")

TEXTS = ["an H&E image of tumor", "an H&E image of normal tissue", "lymphocytes"]


def _tiny_config() -> dict:
    from medfoundry.models.conch import conch_config

    config = conch_config()  # the published conch_ViT-B-16, shrunk
    config["vision_cfg"].update(layers=1, width=64, num_heads=2, image_size=448)
    config["text_cfg"].update(width=64, heads=2, layers=1)
    config["multimodal_cfg"].update(width=64, heads=2, layers=1)
    config["embed_dim"], config["embed_dim_caption"] = 32, 64
    config["vision_cfg"]["attn_pooler_heads"] = 2
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from medfoundry.models.conch import build_conch

    torch.manual_seed(0)
    config = _tiny_config()
    model = build_conch(config)
    with torch.no_grad():
        for p in model.parameters():  # move every weight away from its initial value so a skipped load shows
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("conch")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    record = dataclasses.replace(get_record("conch"), arch_config={"model_cfg": config})
    return record, folder / "pytorch_model.bin", config


def test_embeddings_equal_reference(setup, tmp_path: Path) -> None:
    record, path, config = setup
    predictor = load_contrastive(record, path)
    reference, transform = occ.create_model_from_pretrained(dict(config, custom_text=True), checkpoint_path=str(path))
    reference.eval()
    tokenizer = occ.get_tokenizer()
    if not hasattr(type(tokenizer), "batch_encode_plus"):  # removed in transformers 5: its list form is __call__
        tokenizer.batch_encode_plus = tokenizer.__call__
    pixels = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        ref_img = reference.encode_image(pixels, proj_contrast=True, normalize=True)
        ref_txt = reference.encode_text(occ.tokenize(tokenizer, TEXTS))
        ours_img = predictor.backend.encode_image(pixels)
    assert torch.allclose(ours_img, ref_img, atol=1e-4)
    assert np.abs(predictor.embed_texts(TEXTS) - ref_txt.numpy()).max() <= 1e-4
    # the record's preprocessing against CONCH's own transform, on a greyscale and a colour file
    rng = np.random.default_rng(0)
    files = []
    for i, shape in enumerate([(500, 470, 3), (460, 520)]):
        base = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8, *shape[2:]), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(base).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    ref_pixels = torch.stack([transform(Image.open(p)) for p in files])
    from medfoundry.io import read_image
    from medfoundry.predict.preprocess import preprocess_batch

    ours = preprocess_batch([read_image(p) for p in files], record.preprocess)
    assert ours.shape == ref_pixels.shape == (2, 3, 448, 448)
    assert float((ours - ref_pixels).abs().max()) <= 1e-4
    with torch.no_grad():
        ref_files = reference.encode_image(ref_pixels).numpy()
    assert np.abs(predictor.embed_images(files) - ref_files).max() <= 1e-4


def test_wrong_inputs_are_typed_errors(setup, tmp_path: Path) -> None:
    record, path, _ = setup
    predictor = load_contrastive(record, path)
    with pytest.raises(InputContractError, match="pixels"):
        predictor.backend.encode_image(torch.zeros(1, 1, 448, 448))
    with pytest.raises(InputContractError, match="multiples"):
        predictor.backend.encode_image(torch.zeros(1, 3, 450, 450))
    state = torch.load(path, weights_only=True)
    state.pop(next(k for k in state if k.startswith("text.")))
    torch.save(state, tmp_path / "cut.bin")
    with pytest.raises(WeightsError, match="missing"):
        load_contrastive(record, tmp_path / "cut.bin")
    # the published record names the package's own config
    assert get_record("conch").arch_config == {"model_cfg": "conch_ViT-B-16"}


def test_cli_embed_images_and_texts_equal_reference(setup, tmp_path: Path, monkeypatch, capsys) -> None:
    """``medfoundry embed`` (images, and ``--text``) with a CONCH record writes the package's own embeddings of
    its own transform's pixels and of its tokenizer's tokens."""
    from medfoundry.cli.main import main
    from medfoundry.registry import catalog

    record, path, config = setup
    test_record = dataclasses.replace(record, name="conch-tiny-test", aliases=())
    catalog.get_record("conch")
    monkeypatch.setitem(catalog._RECORDS, test_record.name, test_record)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (470, 500, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    args = ["--model", test_record.name, "--weights", str(path)]
    assert main(["embed", str(tmp_path / "a.png"), *args, "--out", str(tmp_path / "img.npy")]) == 0
    assert main(["embed", *[f"--text={t}" for t in TEXTS], *args, "--out", str(tmp_path / "txt.npy")]) == 0
    capsys.readouterr()
    reference, transform = occ.create_model_from_pretrained(dict(config, custom_text=True), checkpoint_path=str(path))
    tokenizer = occ.get_tokenizer()
    if not hasattr(type(tokenizer), "batch_encode_plus"):
        tokenizer.batch_encode_plus = tokenizer.__call__
    with torch.no_grad():
        ref_img = reference.eval().encode_image(transform(Image.open(tmp_path / "a.png"))[None]).numpy()
        ref_txt = reference.encode_text(occ.tokenize(tokenizer, TEXTS)).numpy()
    assert np.abs(np.load(tmp_path / "img.npy") - ref_img).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "txt.npy") - ref_txt).max() <= 1e-4
