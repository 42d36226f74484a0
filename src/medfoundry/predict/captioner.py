"""ReportGenerator for the embedded prefix captioner: an image in, a caption out, token by token.

The image goes through the captioner's contrastive image tower (its own preprocessing contract, frozen), the
embedding through the trained projector into the language model, which decodes greedily (reproducible) with a
KV cache. :meth:`Captioner.stream` yields text pieces as tokens are chosen; ``should_stop`` lets a caller
interrupt between tokens (the CLI stops cleanly on Ctrl-C and keeps the text written so far).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.io.image import MedImage
from medfoundry.models.captioner import CaptionerConfig, PrefixCaptioner, build_captioner, load_language_model
from medfoundry.registry.records import ModelRecord


@dataclass
class Caption:
    """One generated caption: the ``text``, how many tokens were generated, the seconds it took, and whether
    decoding ended early because the caller stopped it (``interrupted``)."""

    text: str
    new_tokens: int
    seconds: float
    interrupted: bool = False


class Captioner:
    """Holds the image tower (a ContrastivePredictor), the captioner module and the tokenizer."""

    def __init__(self, encoder: Any, model: PrefixCaptioner, tokenizer: Any, record: ModelRecord | None = None,
                 device: str = "cpu") -> None:
        self.encoder = encoder
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.record = record
        self.device = device

    @property
    def name(self) -> str:
        return self.record.name if self.record is not None else "captioner"

    def features(self, image: MedImage) -> torch.Tensor:
        """1×D image embedding of a 2D image (volumes raise: pick a slice first)."""
        if image.is_volume:
            raise InputContractError("captioning takes a 2D image: give a slice of the volume (--slice K)")
        return torch.from_numpy(self.encoder.embed_images([image])).to(self.device)

    def stream(self, image: MedImage, max_new_tokens: int | None = None,
               should_stop: Callable[[], bool] | None = None, no_repeat_ngram: int | None = None) -> Iterator[str]:
        """Text pieces of the caption as tokens are chosen (joined, they give :meth:`generate`'s text);
        ``no_repeat_ngram`` as in :meth:`PrefixCaptioner.stream` (default: the model config's)."""
        limit = max_new_tokens or self.model.config.max_caption_tokens
        tokens: list[int] = []
        shown = ""
        for token in self.model.stream(self.features(image), limit, self.tokenizer.eos_token_id, should_stop,
                                       no_repeat_ngram):
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
                continue
            yield text[len(shown):]
            shown = text
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if len(text) > len(shown):
            yield text[len(shown):]

    def generate(self, image: MedImage, max_new_tokens: int | None = None,
                 on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, no_repeat_ngram: int | None = None) -> Caption:
        """The whole caption (greedy, no repeated n-gram of ``no_repeat_ngram`` tokens), calling
        ``on_text(piece)`` as pieces arrive; stops early when
        ``should_stop()`` turns true or on KeyboardInterrupt (``interrupted`` is then True)."""
        start = time.perf_counter()
        pieces: list[str] = []
        stopped = {"flag": False}

        def stop() -> bool:
            stopped["flag"] = bool(should_stop and should_stop())
            return stopped["flag"]

        interrupted = False
        try:
            for piece in self.stream(image, max_new_tokens, stop, no_repeat_ngram):
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)
        except KeyboardInterrupt:
            interrupted = True
        text = "".join(pieces).strip()
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        return Caption(text, n, time.perf_counter() - start, interrupted or stopped["flag"])


def load_captioner(folder: str | Path, record: ModelRecord | None = None, device: str = "cpu",
                   offline: bool | None = None) -> Captioner:
    """A :class:`Captioner` from a folder with ``config.json`` and ``adapter.safetensors`` (what
    ``medfoundry train captioner`` writes to ``OUT/model``, or an embedded model's folder)."""
    from medfoundry.predict.contrastive import open_contrastive

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not (folder / "config.json").is_file() or not (folder / "adapter.safetensors").is_file():
        raise WeightsError(f"{folder} is not a captioner folder (config.json + adapter.safetensors)")
    config = CaptionerConfig.from_dict(json.loads((folder / "config.json").read_text()))
    lm, tokenizer = load_language_model(config.language_model, offline=offline)
    model = build_captioner(config, lm, folder / "adapter.safetensors")
    encoder = open_contrastive(config.image_encoder, device=device)
    check_image_encoder(config, encoder)
    return Captioner(encoder, model, tokenizer, record, device)


def check_image_encoder(config: CaptionerConfig, encoder: Any) -> None:
    """Refuse an image encoder whose weights differ from those the projector was trained on.

    Raises:
        WeightsError: ``config.image_encoder_sha256`` is set and the encoder's loaded weights have another sha256.
    """
    loaded = getattr(encoder, "loaded_weights", None)
    if config.image_encoder_sha256 and loaded is not None and loaded.sha256 != config.image_encoder_sha256:
        raise WeightsError(f"this captioner was trained on {config.image_encoder} weights "
                           f"{config.image_encoder_sha256[:12]}…, but {loaded.sha256[:12]}… are installed; "
                           "retrain it (medfoundry train captioner) or install the matching image encoder")


def open_captioner(model: str = "medfoundry-captioner-tiny", weights: Any = None, device: str = "cpu") -> Captioner:
    """Resolve ``--model``/``--weights`` (a registry name, or ``local-dir:`` of a trained captioner folder)."""
    if model.startswith("local-dir:") and weights is None:
        return load_captioner(model.removeprefix("local-dir:"), device=device)
    from medfoundry.registry.loading import fetch_weights, resolve_model

    record, _ = resolve_model(model, weights)
    if record.arch != "prefix_captioner":
        raise InputContractError(f"{record.name} is not a captioner (arch {record.arch}); conversational models "
                                 "answer with `medfoundry ask`, retrieval reports come from `report --bank`")
    record, resolved = fetch_weights(model, weights)
    if not isinstance(resolved, Path):
        raise WeightsError(f"{record.name}: a captioner loads from its folder, not an in-memory state dict")
    return load_captioner(resolved, record, device)
