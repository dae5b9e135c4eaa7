"""Seeded synthetic Llama-shaped checkpoints (bf16 weights, fp32 moments) for benchmarks.

Written straight with safetensors (no model is instantiated), so gigabyte-sized families
are generated in seconds. Experts are base + small noise; moments are positive. With
``shard_bytes`` the weights are sharded as on the hub (``model-00001-of-0000N.safetensors``
and ``model.safetensors.index.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file


def llama_shapes(layers: int, hidden: int, intermediate: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def n_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def save_sharded(tensors: dict[str, torch.Tensor], folder: Path, shard_bytes: int | None) -> None:
    """One model.safetensors, or hub-style shards of at most ``shard_bytes`` with an index."""
    if not shard_bytes:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    shards, size = [{}], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def write_family(root: Path, n_experts: int, layers: int, hidden: int = 512, intermediate: int = 2048,
                 vocab: int = 32000, seed: int = 0, moments: bool = True,
                 shard_bytes: int | None = None) -> dict[str, Path]:
    shapes = llama_shapes(layers, hidden, intermediate, vocab)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": 8,
              "num_key_value_heads": 8, "vocab_size": vocab, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16"}
    out = {}
    for m in ["base"] + [f"expert{i}" for i in range(n_experts)]:
        folder = root / m
        (folder / "export").mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(seed)  # the same base values in every model
        ge = torch.Generator().manual_seed(seed + 1 + len(out))
        weights, mom = {}, {}
        for name, shape in shapes.items():
            w = torch.randn(shape, generator=g) * 0.02
            if m != "base":
                w += torch.randn(shape, generator=ge) * 0.002
                if moments:
                    mom[name] = torch.rand(shape, generator=ge) * 1e-8
            weights[name] = w.to(torch.bfloat16)
        save_sharded(weights, folder, shard_bytes)
        if mom:
            save_file(mom, str(folder / "export/exp_avg_sq.safetensors"))
        (folder / "config.json").write_text(json.dumps(config))
        out[m] = folder
    return out
