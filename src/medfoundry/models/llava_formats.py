"""Original-LLaVA checkpoints (LLaVA-Med v1.5, LLaVA-1.5 as their authors release them) → transformers' Llava.

The LLaVA code base saves ``LlavaLlamaForCausalLM`` / ``LlavaMistralForCausalLM``: the language model's own
tensor names under ``model.*`` and ``lm_head``, a two-layer projector ``model.mm_projector.{0,2}`` and, when the
vision tower was saved, CLIP's ``vision_model.*`` under ``model.vision_tower.vision_tower.``. Its config names
the CLIP tower (``mm_vision_tower``, a hub id), the feature layer (``mm_vision_select_layer``), whether the
CLS token is dropped (``mm_vision_select_feature``) and whether images are padded to a square
(``image_aspect_ratio: pad``). transformers' ``LlavaForConditionalGeneration`` holds the same modules.

:func:`convert_original_llava` renames the tensors shard by shard (memory: one shard at a time), takes the
tower's weights from the CLIP checkpoint when the LLaVA checkpoint lacks them, adds the ``<image>`` token
(LLaVA splices image features at a placeholder id instead; the new embedding rows are the mean of the old
ones, rows padded to a multiple of 64 as in transformers' own conversion) and writes a folder that
``AutoModelForImageTextToText.from_pretrained`` loads, with ``medfoundry_chat.json`` recording the padding.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medfoundry.errors import OutputExistsError, WeightsError

#: LLaVA's model types → the language model inside.
ORIGINAL_TYPES = {"llava_llama": "llama", "llava": "llama", "llava_mistral": "mistral"}
#: Written beside the converted weights: how medfoundry prompts the model (image padding, provenance).
CHAT_FILE = "medfoundry_chat.json"
_LLAVA_ONLY = ("mm_", "image_", "tokenizer_", "tune_", "freeze_", "unfreeze_", "use_mm_")
_DROP = {"architectures", "model_type", "transformers_version", "_name_or_path"}
_CLIP_TEXT_SIDE = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")


#: The oldest transformers whose Llava processor expands ``<image>`` itself (``num_additional_image_tokens``).
MIN_TRANSFORMERS = "4.47"


def require_transformers() -> None:
    """Raise :class:`WeightsError` when the installed transformers is too old for the conversational path."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
        raise WeightsError(f"conversational models need transformers>={MIN_TRANSFORMERS} (installed: "
                           f"{transformers.__version__}): pip install -U transformers")


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise WeightsError(f"{folder} has no config.json: not a Hugging Face-style checkpoint folder")
    return json.loads(path.read_text())


def is_original_llava(config: dict[str, Any]) -> bool:
    """Whether a config.json is the LLaVA code base's own (as opposed to transformers' ``llava``)."""
    return config.get("model_type") in ORIGINAL_TYPES and "mm_vision_tower" in config


def _tensors(folder: Path, pattern_safe: str = "*.safetensors") -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, tensors) for each weights shard of a folder, one shard in memory at a time."""
    from safetensors.torch import load_file

    from medfoundry.registry.loading import load_state_dict

    shards = sorted(folder.glob(pattern_safe))
    if shards:
        for shard in shards:
            yield shard, load_file(str(shard), device="cpu")
        return
    shards = sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("*.bin"))
    if not shards:
        raise WeightsError(f"no weights (*.safetensors or pytorch_model*.bin) in {folder}")
    for shard in shards:
        yield shard, load_state_dict(shard)  # weights_only: pickled code is refused


def _target_prefixes(names: set[str]) -> dict[str, str]:
    """Where transformers' Llava (of the installed version) keeps each part, from its own tensor names."""

    def prefix(suffix: str) -> str:
        hits = [n[: -len(suffix)] for n in names if n.endswith(suffix)]
        if len(hits) != 1:
            raise WeightsError(f"this transformers version's Llava has {len(hits)} tensors named *{suffix}")
        return hits[0]

    return {"vision": prefix("embeddings.patch_embedding.weight"), "projector": prefix("linear_1.weight"),
            "text": prefix("embed_tokens.weight"), "head": prefix("lm_head.weight")}


def rename_original(name: str, prefixes: dict[str, str]) -> str | None:
    """An original-LLaVA tensor name → transformers' Llava name; None for buffers to drop."""
    if name.endswith((".inv_freq", "position_ids")):  # buffers that old checkpoints saved
        return None
    source = "model.vision_tower.vision_tower.vision_model."
    if name.startswith(source):
        return prefixes["vision"] + name.removeprefix(source)
    for index, layer in (("0", "linear_1"), ("2", "linear_2")):
        if name.startswith(f"model.mm_projector.{index}."):
            return prefixes["projector"] + f"{layer}." + name.removeprefix(f"model.mm_projector.{index}.")
    if name == "lm_head.weight":
        return prefixes["head"] + "lm_head.weight"
    if name.startswith("model."):
        return prefixes["text"] + name.removeprefix("model.")
    raise WeightsError(f"unexpected tensor {name!r} in an original-LLaVA checkpoint")


def _grow_rows(tensor: Any, rows: int) -> Any:
    """Append rows (the mean of the existing ones) up to ``rows``."""
    import torch

    extra = rows - tensor.shape[0]
    if extra <= 0:
        return tensor
    mean = tensor.float().mean(0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(extra, -1)], 0)


def convert_original_llava(source: str | Path, out: str | Path, vision_tower: str | Path,
                           *, overwrite: bool = False) -> Path:
    """Convert an original-LLaVA checkpoint folder to a transformers Llava folder.

    Args:
        source: folder with the LLaVA ``config.json``, tokenizer files and weight shards.
        out: the folder to write (created atomically: a failed conversion leaves nothing under this name).
        vision_tower: the CLIP vision tower's folder (``config.json``, ``preprocessor_config.json`` and, when
            the LLaVA checkpoint lacks the tower's weights, the CLIP weights), i.e. ``mm_vision_tower``.
    Returns:
        ``out``.
    Raises:
        WeightsError: not an original-LLaVA folder, an unsupported projector, or tensors that do not fit.
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    require_transformers()
    source, out, tower = Path(source), Path(out), Path(vision_tower)
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    cfg = read_config(source)
    if not is_original_llava(cfg):
        raise WeightsError(f"{source} is not an original-LLaVA checkpoint (model_type {cfg.get('model_type')!r})")
    projector = cfg.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise WeightsError(f"{source}: projector {projector!r} is not supported (transformers' Llava is mlp2x_gelu)")
    if cfg.get("mm_use_im_start_end"):
        raise WeightsError(f"{source}: image start/end tokens (mm_use_im_start_end) are not supported")
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    text_fields = {k: v for k, v in cfg.items() if k not in _DROP and not k.startswith(_LLAVA_ONLY)}
    rows = max(int(cfg.get("vocab_size", 0)), 64 * math.ceil(len(tokenizer) / 64))
    text_config = AutoConfig.for_model(ORIGINAL_TYPES[cfg["model_type"]], **{**text_fields, "vocab_size": rows})
    vision_config = CLIPVisionConfig.from_pretrained(str(tower), local_files_only=True)
    strategy = "default" if cfg.get("mm_vision_select_feature", "patch") == "patch" else "full"
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         pad_token_id=tokenizer.pad_token_id, projector_hidden_act="gelu",
                         vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
                         vision_feature_select_strategy=strategy,
                         image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2)
    config.architectures = ["LlavaForConditionalGeneration"]
    with torch.device("meta"):
        wanted = set(LlavaForConditionalGeneration(config).state_dict())
    prefixes = _target_prefixes(wanted)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # beside out: one rename at the end
    try:
        weight_map: dict[str, str] = {}
        has_tower = False
        for i, (_, tensors) in enumerate(_tensors(source)):
            mapped = {}
            for name, tensor in tensors.items():
                target = rename_original(name, prefixes)
                if target is None:
                    continue
                if target not in wanted:
                    raise WeightsError(f"{source}: tensor {name!r} → {target!r} has no place in the Llava model")
                has_tower |= target.startswith(prefixes["vision"])
                if target.endswith(("embed_tokens.weight", "lm_head.weight")):
                    tensor = _grow_rows(tensor, rows)
                mapped[target] = tensor.contiguous()
            file = f"model-{i:05d}.safetensors"
            save_file(mapped, str(tmp / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(mapped, file))
        if not has_tower:  # LLaVA-1.5-style checkpoints leave the frozen CLIP tower out
            for _, tensors in _tensors(tower):  # a CLIPModel (vision_model.*) or CLIPVisionModel checkpoint
                mapped = {prefixes["vision"] + n.removeprefix("vision_model."): t.contiguous()
                          for n, t in tensors.items() if not n.startswith(_CLIP_TEXT_SIDE)}
                mapped = {n: t for n, t in mapped.items() if n in wanted}
                save_file(mapped, str(tmp / "model-vision.safetensors"), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(mapped, "model-vision.safetensors"))
        missing = sorted(wanted - set(weight_map))
        if missing:
            raise WeightsError(f"{source}: the conversion lacks {len(missing)} tensors, e.g. {missing[:3]}")
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        config.save_pretrained(str(tmp))
        image_processor = CLIPImageProcessor.from_pretrained(str(tower), local_files_only=True)
        LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size,
                       vision_feature_select_strategy=strategy, num_additional_image_tokens=1
                       ).save_pretrained(str(tmp))
        (tmp / CHAT_FILE).write_text(json.dumps({
            "pad_to_square": cfg.get("image_aspect_ratio") == "pad", "converted_from": str(source),
            "model_type": cfg["model_type"]}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
