"""VisualChat against transformers' own Llava, and original-LLaVA checkpoints converted to it (tiny checkpoints
from tests/tiny_llava.py, built once per session by the ``tiny_llava`` fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError, OutputExistsError, RegistryError, WeightsError
from medfoundry.io import MedImage
from tiny_llava import MEAN, PROMPT, cxr, original_folder, record

transformers = pytest.importorskip("transformers")


@pytest.fixture
def reference(tiny_llava):
    return tiny_llava


def _reference_answer(model, processor, picture, question: str) -> list[int]:
    inputs = processor(images=picture, text=PROMPT.format(question=question), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_chat_matches_transformers_generate(reference) -> None:
    from medfoundry.predict.conversational import load_chat

    model, processor, hf, _, _ = reference
    chat = load_chat(record(), hf)
    image = cxr()
    answer = chat.ask(image, "is there a lesion ?", max_new_tokens=6)
    expected = _reference_answer(model, processor, chat.picture(image), "is there a lesion ?")
    assert answer.new_tokens == len(expected)
    assert answer.text == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert answer.text  # some words were generated
    assert "<image>" in answer.prompt


def test_picture_is_the_windowed_image_padded_to_a_square(reference) -> None:
    from medfoundry.predict.conversational import load_chat

    chat = load_chat(record(pad_to_square=True), reference[2])
    picture = np.asarray(chat.picture(cxr()))
    assert picture.shape == (56, 56, 3)
    fill = [int(255 * m) for m in MEAN]  # LLaVA: (122, 116, 104)
    assert (picture[:8] == fill).all() and (picture[-8:] == fill).all()  # 8 rows above and below the 40-row image
    lesion = picture[8 + 15, 30]  # 40 HU in a (-600 ± 750) window
    assert abs(int(lesion[0]) - round(255 * (40 + 1350) / 1500)) <= 1


@pytest.mark.parametrize("with_tower", [True, False])
def test_original_llava_checkpoint_converts_exactly(reference, with_tower: bool) -> None:
    from medfoundry.models.llava_formats import convert_original_llava
    from medfoundry.predict.conversational import load_chat

    model, processor, _, tower, root = reference
    original = original_folder(model, root, with_tower)
    converted = convert_original_llava(original, root / f"converted-{with_tower}", tower)
    with pytest.raises(OutputExistsError):
        convert_original_llava(original, converted, tower)
    chat = load_chat(record(), converted)
    assert chat.pad_square  # image_aspect_ratio: pad
    inputs = processor(images=chat.picture(cxr()), text=PROMPT.format(question="is there a mass ?"),
                       return_tensors="pt")
    with torch.no_grad():
        want = model(**inputs).logits
        got = chat.model(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_original_llava_through_the_registry_path(reference, tmp_path: Path, monkeypatch) -> None:
    from medfoundry.predict.conversational import load_chat

    model, processor, _, tower, root = reference
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path))
    original = original_folder(model, root, with_tower=False)
    chat = load_chat(record(vision_tower=f"local-dir:{tower}"), original)
    assert list((tmp_path / "converted").iterdir())  # converted once, into the cache
    answer = chat.ask(cxr(), "is there a nodule ?", max_new_tokens=6)
    expected = _reference_answer(model, processor, chat.picture(cxr()), "is there a nodule ?")
    assert answer.text == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_bad_inputs_are_typed_errors(reference, tmp_path: Path) -> None:
    from medfoundry.models.llava_formats import convert_original_llava
    from medfoundry.predict.conversational import load_chat, open_chat

    chat = load_chat(record(), reference[2])
    with pytest.raises(InputContractError, match="empty"):
        chat.ask(cxr(), "   ")
    with pytest.raises(InputContractError, match="2D"):
        chat.ask(MedImage(array=np.zeros((3, 20, 20), np.float32), spacing=(1, 1, 1)), "is there a mass ?")
    with pytest.raises(InputContractError, match="max_new_tokens"):
        chat.ask(cxr(), "is there a mass ?", max_new_tokens=0)
    with pytest.raises(RegistryError, match="prompt template"):
        load_chat(record(prompt="{question}"), reference[2])
    with pytest.raises(WeightsError, match="trust-remote-code"):
        load_chat(record("hf_vlm", trust_remote_code=True), reference[2])
    with pytest.raises(WeightsError, match="not an original-LLaVA"):
        convert_original_llava(reference[2], tmp_path / "x", reference[3])
    with pytest.raises(InputContractError, match="not a conversational"):
        open_chat("medfoundry-sam-lite")
    with pytest.raises(WeightsError):
        load_chat(record(), tmp_path)  # an empty folder


def test_ask_command(reference, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from medfoundry.cli.main import main
    from medfoundry.registry.loading import write_checkpoint_record

    folder = tmp_path / "chat"
    shutil.copytree(reference[2], folder)
    write_checkpoint_record(record(), folder)  # a self-describing folder: the record travels with it
    Image.fromarray(np.full((30, 40), 90, np.uint8)).save(tmp_path / "x.png")
    assert main(["ask", str(tmp_path / "x.png"), "is there a lesion ?", "--model", f"local-dir:{folder}",
                 "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny-llava" and out["new_tokens"] <= 4 and "<image>" in out["prompt"]
    assert main(["ask", str(tmp_path / "x.png"), "is there a lesion ?", "--model", "medfoundry-sam-lite"]) == 2
