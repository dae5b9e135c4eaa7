"""Experts of a pretrained family: full fine-tuning of the converted base on one task.

torch's AdamW on every parameter (fp32 master weights), loss on the answer tokens of the
chat-formatted examples, never a held-out prompt; the expert is saved in the base's
stored dtype with the base's tokenizer, chat template and generation config, and its
``exp_avg_sq`` (fp32, keyed by parameter name, with the step count and betas) as
``export/exp_avg_sq.safetensors``, as the paper's experts ship it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from otamerge.demo.build import derived_seed, save_model
from otamerge.demo.settings import TrainSettings
from otamerge.demo.train import save_moments, train
from otamerge.io.atomic import atomic_dir
from otamerge.pretrained.chat import make_batch
from otamerge.pretrained.tasks import train_sampler


def stored_dtype(model_dir: str | Path) -> torch.dtype:
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(model_dir, local_files_only=True), "dtype", None) or "float32"
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def build_expert(base_dir: str | Path, out_dir: str | Path, task: str, seed: int, settings: TrainSettings,
                 n_eval: int, threads: int = 2) -> Path:
    """Fine-tune the base on ``task`` and save the expert with its AdamW second moments."""
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    model.config.use_cache = False  # training: no KV cache

    opt = train(model, tokenizer, train_sampler(task, n_eval, seed), settings,
                derived_seed(seed, "expert", task), desc=task, encode=make_batch)
    model.config.use_cache = True
    with atomic_dir(out_dir) as tmp:
        save_model(model.to(stored_dtype(base_dir)), tokenizer, tmp,
                   {"role": "expert", "seed": seed, "task": task, "settings": asdict(settings)})
        save_moments(model, opt, tmp, settings)
    return Path(out_dir)
