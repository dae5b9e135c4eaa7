"""Tiny random Llama checkpoints (base, experts, moments) written for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from otamerge.demo.tokenizer import build_tokenizer

MOMENTS = "export/exp_avg_sq.safetensors"


def make_family(root: Path, n_experts: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32,
                layers: int = 2, hidden: int = 16, scale: float = 0.02) -> dict[str, Path]:
    """base/ and expert{i}/ folders in Hugging Face layout, experts = base + noise, each with
    positive moments spanning many orders of magnitude. Returns name -> folder."""
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=32, tie_word_embeddings=False)
    torch.manual_seed(seed)
    base = LlamaForCausalLM(cfg).to(dtype)
    out = {}
    gen = torch.Generator().manual_seed(seed + 1)
    for name in ["base"] + [f"expert{i}" for i in range(n_experts)]:
        model = base if name == "base" else LlamaForCausalLM(cfg).to(dtype)
        if name != "base":
            model.load_state_dict({k: v + scale * torch.randn(v.shape, generator=gen).to(dtype)
                                   for k, v in base.state_dict().items()})
        folder = root / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        if name != "base":
            moments = {k: torch.exp(torch.empty(v.shape).uniform_(-60, 0, generator=gen))
                       for k, v in model.state_dict().items()}
            (folder / "export").mkdir()
            save_file(moments, str(folder / MOMENTS))
        out[name] = folder
    return out
