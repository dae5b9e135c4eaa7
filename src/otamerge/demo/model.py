"""The demo's tiny Llama-architecture model and its batching."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from otamerge.demo.tasks import Example

DEFAULT_ARCH: dict[str, int] = {
    "hidden_size": 96,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 384,
    "max_positions": 64,
}


def make_config(tokenizer: PreTrainedTokenizerFast, arch: dict[str, Any] | None = None) -> LlamaConfig:
    """A LlamaConfig with untied embeddings, so embed_tokens and lm_head are separate
    tensors with their own moments, as in Llama-3.1-8B."""
    a = {**DEFAULT_ARCH, **(arch or {})}
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=a["hidden_size"],
        intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_layers"],
        num_attention_heads=a["num_heads"],
        num_key_value_heads=a["num_heads"],
        max_position_embeddings=a["max_positions"],
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def new_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def token_table(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Character -> id; encoding by table lookup keeps the training loop cheap."""
    return {k: v for k, v in tokenizer.get_vocab().items() if len(k) == 1}


def make_batch(
    examples: Sequence[Example], table: dict[str, int], bos: int, eos: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` with the loss on answer tokens and EOS only.

    Padding after the sequence needs no attention mask: causal attention never lets a
    real token see a later pad.
    """
    rows = []
    for prompt, answer in examples:
        p = [bos] + [table[c] for c in prompt]
        a = [table[c] for c in answer] + [eos]
        rows.append((p, a))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(a)
    return ids, labels
