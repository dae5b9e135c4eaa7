"""Tiny random Llama checkpoints (base, experts, moments) written for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from otamerge.demo.tokenizer import build_tokenizer

from otamerge.names import EXPORTED_MOMENTS as MOMENTS


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


def add_tokens(folder: Path, tokens: list[str], seed: int = 0) -> None:
    """Add ``tokens`` to the model in ``folder`` as a fine-tuning framework does:
    tokenizer.add_tokens, embed_tokens and lm_head resized by new random rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens(tokens)
    tok.save_pretrained(folder)
    w = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = 0.02 * torch.randn((len(tok) - w[name].shape[0], w[name].shape[1]), generator=gen)
        w[name] = torch.cat([w[name], extra.to(w[name].dtype)])
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = len(tok)
    (folder / "config.json").write_text(json.dumps(config))


def swap_tokens(folder: Path, a: str, b: str) -> None:
    """Exchange the ids of tokens ``a`` and ``b`` and their embedding rows: the same model
    with its vocabulary in another order."""
    tj = json.loads((folder / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    ia, ib = vocab[a], vocab[b]
    vocab[a], vocab[b] = ib, ia
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    w = load_file(folder / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w[name][[ia, ib]] = w[name][[ib, ia]]
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})


def trainer_checkpoint(root: Path, steps: int = 3, seed: int = 0, tied: bool = True,
                       base: Path | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real ``transformers.Trainer`` run on CPU (a tiny Llama, AdamW with weight decay,
    ``save_strategy="steps"``): returns its ``checkpoint-<steps>`` folder as the Trainer
    wrote it, and the optimizer's exp_avg_sq at that step keyed by parameter name (read
    from the live optimizer, so independent of any file). ``base`` (a model folder) is
    fine-tuned instead of a fresh random model; its base model is saved in ``root/base``."""
    from transformers import Trainer, TrainingArguments

    tok = build_tokenizer()
    if base is None:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                          tie_word_embeddings=tied)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        model.save_pretrained(root / "base")
        tok.save_pretrained(root / "base")
    else:
        model = LlamaForCausalLM.from_pretrained(base)
    gen = torch.Generator().manual_seed(seed + 100)
    rows = [torch.randint(3, len(tok), (8,), generator=gen) for _ in range(16)]
    data = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in rows]
    args = TrainingArguments(output_dir=str(root / "run"), max_steps=steps, save_strategy="steps",
                             save_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                             weight_decay=0.01, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                             logging_strategy="no", seed=seed, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    opt = trainer.optimizer
    live = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in model.named_parameters()}
    return root / "run" / f"checkpoint-{steps}", live
