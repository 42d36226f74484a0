"""Tiny LLaVA checkpoints for the conversational tests: a word-level tokenizer, a 3-layer CLIP vision tower and a
2-layer Mistral language model with random weights; the reference is transformers' ``LlavaForConditionalGeneration``
fed by its ``LlavaProcessor``; :func:`original_folder` writes the same weights under the LLaVA code base's names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medfoundry.io import MedImage
from medfoundry.io.window import Window
from medfoundry.registry import ModelRecord

WORDS = ["<unk>", "<s>", "</s>", "USER", "ASSISTANT", ":", "is", "there", "a", "lesion", "yes", "no", "?",
         "the", "lung", "effusion", "normal", "left", "right", "small", "large", "mass", "nodule", "in"]
PROMPT = "USER : <image>\n{question} ASSISTANT :"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def tokenizer(with_image: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if with_image:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def configs():
    from transformers import CLIPVisionConfig, MistralConfig

    vision = CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=2, projection_dim=16)
    text = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return vision, text


def record(arch: str = "llava", **arch_config) -> ModelRecord:
    return ModelRecord.from_dict({
        "name": "tiny-llava", "arch": arch, "family": "TPM-conversational", "tasks": ["vqa"],
        "modalities": ["CR"], "license": "MIT", "commercial_use": True, "paper": "t", "training_data": "t",
        "arch_config": {"prompt": PROMPT, **arch_config},
        "preprocess": {"image_size": 28, "resize": "shortest_crop", "channels": 3, "intensity": "window",
                       "scale": 1.0, "mean": MEAN, "std": STD, "interpolation": "bicubic"}})


def build_reference(root: Path):
    """A tiny transformers Llava + processor (the reference), saved to ``root/hf``, and the CLIP tower folder
    ``root/clip-tower`` it was built from (a whole CLIP checkpoint). Returns (model, processor, hf, tower, root)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision, text = configs()
    tok = tokenizer(with_image=True)
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


def original_folder(model, root: Path, with_tower: bool) -> Path:
    """The reference model's weights under the LLaVA code base's names and config (vocabulary without <image>)."""
    from safetensors.torch import save_file

    _, text = configs()
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
    tokenizer(with_image=False).save_pretrained(out)
    return out


def cxr() -> MedImage:
    rng = np.random.default_rng(3)
    arr = rng.normal(-600, 200, (40, 56)).astype(np.float32)
    arr[10:30, 20:40] = 40.0
    return MedImage(array=arr, spacing=(0.5, 0.5), window=Window(-600.0, 1500.0), modality="CT")
