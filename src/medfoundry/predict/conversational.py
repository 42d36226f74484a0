"""VisualChat: conversational (VQA / chat) models — an image and a question in, an answer out.

The survey's TPM-conversational family (LLaVA-Med, and any vision-language model that transformers runs
natively: Llava, LlavaNext, Idefics, PaliGemma, Qwen2-VL ... folders). The model's processor owns resizing and
normalisation; medfoundry turns the medical image into the 8-bit RGB picture a radiologist would see
(the image's window for CT/MR, greyscale repeated), optionally padded to a square with the processor's mean
colour (LLaVA's ``image_aspect_ratio: pad``), and formats the prompt with the record's template or the
processor's chat template. Decoding is greedy, so answers are reproducible.

Original-LLaVA checkpoints (the LLaVA code base's ``llava_mistral``/``llava_llama``, as LLaVA-Med v1.5 is
published) are converted once to transformers' Llava (:mod:`medfoundry.models.llava_formats`) into
``$MEDFOUNDRY_CACHE/converted/``. Checkpoints that need their own Python code (``trust_remote_code``) run only
when the caller asks for it explicitly.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputContractError, RegistryError, WeightsError
from medfoundry.io.image import MedImage
from medfoundry.registry.loading import LoadedWeights
from medfoundry.registry.records import ModelRecord

#: Largest image (in pixels) accepted; the processor downsamples anyway, so bigger inputs are a mistake.
DEFAULT_MAX_PIXELS = 64_000_000


@dataclass
class ChatAnswer:
    """One answer: ``text`` (special tokens removed), the ``prompt`` the model saw (with ``<image>``), the number
    of generated tokens and the wall-clock seconds of generation."""

    text: str
    prompt: str
    new_tokens: int
    seconds: float


def picture_rgb(image: MedImage, contract: Any) -> Any:
    """A 2D image as an 8-bit RGB ``PIL.Image`` through the contract's intensity handling (window for CT/MR);
    volumes are refused by :func:`~medfoundry.predict.preprocess.to_unit_range`."""
    from PIL import Image

    from medfoundry.predict.preprocess import to_unit_range

    unit = to_unit_range(image, contract)
    rgb = np.repeat(unit, 3, axis=2) if unit.shape[2] == 1 else unit[..., :3]
    return Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")


def pad_to_square(picture: Any, fill: tuple[int, int, int]) -> Any:
    """LLaVA's ``expand2square``: centre the picture on a square canvas of ``fill`` colour."""
    from PIL import Image

    w, h = picture.size
    if w == h:
        return picture
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(picture, ((side - w) // 2, (side - h) // 2))
    return canvas


class VisualChat:
    """Holds one conversational model and its processor; :meth:`ask` answers a question about an image."""

    def __init__(self, model: Any, processor: Any, record: ModelRecord, device: str = "cpu",
                 prompt_template: str | None = None, pad_square: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if prompt_template is not None and ("{question}" not in prompt_template or "<image>" not in prompt_template):
            raise RegistryError(f"{record.name}: a prompt template needs <image> and {{question}}: {prompt_template!r}")
        self.model = model.eval().to(device)
        self.processor = processor
        self.record = record
        self.device = device
        self.prompt_template = prompt_template
        self.pad_square = pad_square
        self.max_pixels = max_pixels
        self.loaded_weights: LoadedWeights | None = None  # the weights folder/file and its sha256 (set by the loader)

    def prompt(self, question: str) -> str:
        """The text the model sees for ``question``: the record's template, else the processor's chat template."""
        if not question or not question.strip():
            raise InputContractError("ask a question: the text is empty")
        if self.prompt_template is not None:
            return self.prompt_template.format(question=question.strip())
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.strip()}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        raise RegistryError(f"{self.record.name}: no prompt template in its record and no chat template in its "
                            "processor; set arch_config.prompt (with <image> and {question})")

    def picture(self, image: MedImage) -> Any:
        """The RGB picture handed to the processor (windowed, padded to a square when the model expects it)."""
        h, w = image.spatial_shape[-2:]
        if h * w > self.max_pixels:
            raise InputContractError(f"image of {w}×{h} pixels exceeds the limit of {self.max_pixels} pixels")
        picture = picture_rgb(image, self.record.preprocess)
        if self.pad_square:
            mean = getattr(getattr(self.processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
            red, green, blue = (int(255 * m) for m in mean[:3])  # as LLaVA: truncated
            picture = pad_to_square(picture, (red, green, blue))
        return picture

    def ask(self, image: MedImage, question: str, max_new_tokens: int = 128) -> ChatAnswer:
        """Answer ``question`` about a 2D ``image`` (greedy decoding, at most ``max_new_tokens`` tokens)."""
        import torch

        if max_new_tokens < 1:
            raise InputContractError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        prompt = self.prompt(question)
        inputs = self.processor(images=self.picture(image), text=prompt, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        dtype = next(self.model.parameters()).dtype
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        return ChatAnswer(text, prompt, int(new.numel()), time.perf_counter() - start)


def _converted_folder(source: Path, tower: Path) -> Path:
    """Where the transformers copy of an original-LLaVA folder lives (keyed by both folders: their paths, configs
    and the names and sizes of their files, so replaced weights are converted again)."""
    from medfoundry.registry.sources import cache_dir

    key = hashlib.sha256()
    for folder in (source, tower):
        key.update(str(folder.resolve()).encode())
        key.update((folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b"")
        key.update(str(sorted((f.name, f.stat().st_size) for f in folder.iterdir() if f.is_file())).encode())
    return cache_dir() / "converted" / key.hexdigest()[:16]


def load_chat(record: ModelRecord, weights: Any, device: str = "cpu", *, trust_remote_code: bool = False,
              vision_tower: str | Path | None = None) -> VisualChat:
    """Build a :class:`VisualChat` for ``record`` from a resolved weights folder.

    ``arch`` ``llava``: a transformers Llava folder, or an original-LLaVA folder (converted once; its CLIP tower
    comes from ``vision_tower`` or the record's ``arch_config.vision_tower``). ``hf_vlm``: any folder that
    ``AutoModelForImageTextToText`` loads; code shipped with the checkpoint runs only with ``trust_remote_code``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medfoundry.models.llava_formats import (
        CHAT_FILE,
        convert_original_llava,
        is_original_llava,
        read_config,
        require_transformers,
    )

    if record.arch not in ("llava", "hf_vlm"):
        from medfoundry.registry.loading import require_runnable

        require_runnable(record)  # the record's own reason (XrayGPT), when it has one
        raise RegistryError(f"{record.name}: architecture {record.arch!r} is registered but medfoundry cannot run "
                            "it yet")
    require_transformers()
    if isinstance(weights, dict) or not Path(weights).is_dir():
        raise WeightsError(f"{record.name}: conversational models load from a checkpoint folder, got {weights!r}")
    folder = Path(weights)
    remote = record.arch_config.get("trust_remote_code", False)
    if remote and not trust_remote_code:
        raise WeightsError(f"{record.name} runs Python code shipped with its checkpoint; medfoundry runs it only "
                           "when you pass --trust-remote-code (trust_remote_code=True) for a source you trust")
    if record.arch == "llava" and is_original_llava(read_config(folder)):
        from medfoundry.registry.sources import resolve

        spec = vision_tower or record.arch_config.get("vision_tower") or read_config(folder)["mm_vision_tower"]
        spec = str(spec)
        tower = resolve(spec if ":" in spec or Path(spec).exists() else f"hf-hub:{spec}")
        assert isinstance(tower, Path)  # a text spec always resolves to a local path
        converted = _converted_folder(folder, tower)
        if not (converted / CHAT_FILE).is_file():
            convert_original_llava(folder, converted, tower, overwrite=True)
        folder = converted
    extras = json.loads((folder / CHAT_FILE).read_text()) if (folder / CHAT_FILE).is_file() else {}
    import transformers
    from packaging.version import Version

    # the checkpoint's own precision (a 7B model stored in bfloat16 stays 14 GB instead of 28 GB in float32)
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    kwargs = {"local_files_only": True, "trust_remote_code": bool(remote and trust_remote_code)}
    try:
        processor = AutoProcessor.from_pretrained(str(folder), **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(str(folder), **kwargs, **{dtype_key: "auto"})
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{record.name}: {folder} is not a vision-language checkpoint transformers can load "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from exc
    pad = record.arch_config.get("pad_to_square", extras.get("pad_to_square", False))
    chat = VisualChat(model, processor, record, device, prompt_template=record.arch_config.get("prompt"),
                      pad_square=bool(pad))
    chat.loaded_weights = LoadedWeights(Path(weights))  # the folder given, before any format conversion
    return chat


def open_chat(model: str, weights: Any = None, device: str = "cpu", **kwargs: Any) -> VisualChat:
    """Resolve ``--model``/``--weights`` through the registry and return a ready :class:`VisualChat`."""
    from medfoundry.registry.loading import fetch_weights, resolve_model

    record, _ = resolve_model(model, weights)
    if "vqa" not in record.tasks:
        raise InputContractError(f"{record.name} is a {record.family} model, not a conversational (VQA) model")
    record, resolved = fetch_weights(model, weights)
    return load_chat(record, resolved, device, **kwargs)
