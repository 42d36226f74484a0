"""A tiny causal LM and word-level tokenizer, built offline, for the captioner tests."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "axial", "coronal", "sagittal", "ct", "mri", "of", "the", "head", "chest", "abdomen", "spine", "pelvis", ".",
    "lesion", "mass", "normal", "brain", "liver", "image", "shows", "a", "with", "no",
]


def tiny_language_model(folder: Path) -> Path:
    """Save a 2-layer Llama (hidden 32) and its word-level tokenizer to ``folder``; returns it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "<pad>": 2} | {w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>",
                                        pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=1, pad_token_id=2, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
