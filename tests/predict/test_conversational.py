"""VisualChat against transformers' own Llava, and original-LLaVA checkpoints converted to it.

The tests build tiny checkpoints: a word-level tokenizer, a 2-layer CLIP vision tower and a 2-layer Mistral
language model with random weights. The reference is transformers' ``LlavaForConditionalGeneration`` fed by its
``LlavaProcessor``; the original-LLaVA folder is written with the LLaVA code base's tensor names and config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError, OutputExistsError, RegistryError, WeightsError
from medfoundry.io import MedImage
from medfoundry.io.window import Window
from medfoundry.registry import ModelRecord

transformers = pytest.importorskip("transformers")

WORDS = ["<unk>", "<s>", "</s>", "USER", "ASSISTANT", ":", "is", "there", "a", "lesion", "yes", "no", "?",
         "the", "lung", "effusion", "normal", "left", "right", "small", "large", "mass", "nodule", "in"]
PROMPT = "USER : <image>\n{question} ASSISTANT :"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def _tokenizer(with_image: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if with_image:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def _configs():
    from transformers import CLIPVisionConfig, MistralConfig

    vision = CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=2, projection_dim=16)
    text = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return vision, text


def _record(arch: str = "llava", **arch_config) -> ModelRecord:
    return ModelRecord.from_dict({
        "name": "tiny-llava", "arch": arch, "family": "TPM-conversational", "tasks": ["vqa"],
        "modalities": ["CR"], "license": "MIT", "commercial_use": True, "paper": "t", "training_data": "t",
        "arch_config": {"prompt": PROMPT, **arch_config},
        "preprocess": {"image_size": 28, "resize": "shortest_crop", "channels": 3, "intensity": "window",
                       "scale": 1.0, "mean": MEAN, "std": STD, "interpolation": "bicubic"}})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny transformers Llava + processor (the reference) and the CLIP tower folder it was built from."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    root = tmp_path_factory.mktemp("llava")
    vision, text = _configs()
    tok = _tokenizer(with_image=True)
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         pad_token_id=tok.pad_token_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=4)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lm_head.weight"):
                p.mul_(20)  # a larger output scale, so that greedy answers are not all one token
            if name.endswith(("lm_head.weight", "embed_tokens.weight")):
                p[len(WORDS):] = p[: len(WORDS)].mean(0)  # rows past the words: as the conversion adds them
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                         image_mean=MEAN, image_std=STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    hf = root / "hf"
    model.save_pretrained(hf)
    processor.save_pretrained(hf)
    tower = root / "clip-tower"  # a whole CLIP checkpoint, as openai/clip-vit-large-patch14-336 is published
    clip = CLIPModel(CLIPConfig(text_config=CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                                           num_hidden_layers=1, num_attention_heads=2,
                                                           max_position_embeddings=16, bos_token_id=0,
                                                           eos_token_id=1).to_dict(),
                                vision_config=vision.to_dict(), projection_dim=16))
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    clip.save_pretrained(tower)
    image_processor.save_pretrained(tower)
    return model, processor, hf, tower, root


def _original_folder(model, root: Path, with_tower: bool) -> Path:
    """The reference model's weights under the LLaVA code base's names and config (vocabulary without <image>)."""
    from safetensors.torch import save_file

    _, text = _configs()
    out = root / f"original-{with_tower}"
    out.mkdir(exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.vision_tower."):
            if with_tower:
                inner = name.removeprefix("model.vision_tower.")
                state["model.vision_tower.vision_tower.vision_model." + inner] = tensor
        elif name.startswith("model.multi_modal_projector.linear_"):
            index = {"1": "0", "2": "2"}[name.split("linear_")[1][0]]
            state[f"model.mm_projector.{index}." + name.split(".")[-1]] = tensor
        elif name.startswith("model.language_model."):
            tensor = tensor[: len(WORDS)] if name.endswith("embed_tokens.weight") else tensor
            state["model." + name.removeprefix("model.language_model.")] = tensor
        elif name == "lm_head.weight":
            state[name] = tensor[: len(WORDS)]
    half = sorted(state)[: len(state) // 2]  # two shards, as published checkpoints are
    save_file({k: state[k].contiguous() for k in half}, str(out / "model-00001-of-00002.safetensors"))
    save_file({k: state[k].contiguous() for k in state if k not in half}, str(out / "model-00002-of-00002.safetensors"))
    cfg = {**text.to_dict(), "model_type": "llava_mistral", "architectures": ["LlavaMistralForCausalLM"],
           "vocab_size": len(WORDS), "mm_vision_tower": "openai/clip-vit-large-patch14-336",
           "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
           "mm_hidden_size": 32, "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
           "tokenizer_model_max_length": 256}
    (out / "config.json").write_text(json.dumps(cfg))
    _tokenizer(with_image=False).save_pretrained(out)
    return out


def _cxr() -> MedImage:
    rng = np.random.default_rng(3)
    arr = rng.normal(-600, 200, (40, 56)).astype(np.float32)
    arr[10:30, 20:40] = 40.0
    return MedImage(array=arr, spacing=(0.5, 0.5), window=Window(-600.0, 1500.0), modality="CT")


def _reference_answer(model, processor, picture, question: str) -> list[int]:
    inputs = processor(images=picture, text=PROMPT.format(question=question), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_chat_matches_transformers_generate(reference) -> None:
    from medfoundry.predict.conversational import load_chat

    model, processor, hf, _, _ = reference
    chat = load_chat(_record(), hf)
    image = _cxr()
    answer = chat.ask(image, "is there a lesion ?", max_new_tokens=6)
    expected = _reference_answer(model, processor, chat.picture(image), "is there a lesion ?")
    assert answer.new_tokens == len(expected)
    assert answer.text == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert answer.text  # some words were generated
    assert "<image>" in answer.prompt


def test_picture_is_the_windowed_image_padded_to_a_square(reference) -> None:
    from medfoundry.predict.conversational import load_chat

    chat = load_chat(_record(pad_to_square=True), reference[2])
    picture = np.asarray(chat.picture(_cxr()))
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
    original = _original_folder(model, root, with_tower)
    converted = convert_original_llava(original, root / f"converted-{with_tower}", tower)
    with pytest.raises(OutputExistsError):
        convert_original_llava(original, converted, tower)
    chat = load_chat(_record(), converted)
    assert chat.pad_square  # image_aspect_ratio: pad
    inputs = processor(images=chat.picture(_cxr()), text=PROMPT.format(question="is there a mass ?"),
                       return_tensors="pt")
    with torch.no_grad():
        want = model(**inputs).logits
        got = chat.model(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_original_llava_through_the_registry_path(reference, tmp_path: Path, monkeypatch) -> None:
    from medfoundry.predict.conversational import load_chat

    model, processor, _, tower, root = reference
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path))
    original = _original_folder(model, root, with_tower=False)
    chat = load_chat(_record(vision_tower=f"local-dir:{tower}"), original)
    assert list((tmp_path / "converted").iterdir())  # converted once, into the cache
    answer = chat.ask(_cxr(), "is there a nodule ?", max_new_tokens=6)
    expected = _reference_answer(model, processor, chat.picture(_cxr()), "is there a nodule ?")
    assert answer.text == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_bad_inputs_are_typed_errors(reference, tmp_path: Path) -> None:
    from medfoundry.models.llava_formats import convert_original_llava
    from medfoundry.predict.conversational import load_chat, open_chat

    chat = load_chat(_record(), reference[2])
    with pytest.raises(InputContractError, match="empty"):
        chat.ask(_cxr(), "   ")
    with pytest.raises(InputContractError, match="2D"):
        chat.ask(MedImage(array=np.zeros((3, 20, 20), np.float32), spacing=(1, 1, 1)), "is there a mass ?")
    with pytest.raises(InputContractError, match="max_new_tokens"):
        chat.ask(_cxr(), "is there a mass ?", max_new_tokens=0)
    with pytest.raises(RegistryError, match="prompt template"):
        load_chat(_record(prompt="{question}"), reference[2])
    with pytest.raises(WeightsError, match="trust-remote-code"):
        load_chat(_record("hf_vlm", trust_remote_code=True), reference[2])
    with pytest.raises(WeightsError, match="not an original-LLaVA"):
        convert_original_llava(reference[2], tmp_path / "x", reference[3])
    with pytest.raises(InputContractError, match="not a conversational"):
        open_chat("medfoundry-sam-lite")
    with pytest.raises(WeightsError):
        load_chat(_record(), tmp_path)  # an empty folder


def test_ask_command(reference, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from medfoundry.cli.main import main
    from medfoundry.registry.loading import write_checkpoint_record

    folder = tmp_path / "chat"
    shutil.copytree(reference[2], folder)
    write_checkpoint_record(_record(), folder)  # a self-describing folder: the record travels with it
    Image.fromarray(np.full((30, 40), 90, np.uint8)).save(tmp_path / "x.png")
    assert main(["ask", str(tmp_path / "x.png"), "is there a lesion ?", "--model", f"local-dir:{folder}",
                 "--weights", f"local-dir:{folder}", "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny-llava" and out["new_tokens"] <= 4 and "<image>" in out["prompt"]
    assert main(["ask", str(tmp_path / "x.png"), "is there a lesion ?", "--model", "medfoundry-sam-lite"]) == 2
