"""Training of the demo's base and experts with torch's AdamW, and their export.

The base is trained on a mixture of every task (see ``tasks``: by default the full tasks
with a share of answers by each task's other convention); each expert is fine-tuned from
it on one task, optionally with a share of each batch replaying the base's data. At the end
an expert's AdamW second moments ``exp_avg_sq`` are exported keyed by parameter name, as
the paper's experts ship them in ``export/exp_avg_sq.safetensors``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from otamerge.demo.settings import TrainSettings
from otamerge.demo.tasks import TASKS, Example, eval_set, train_sampler
from otamerge.names import EXPORTED_MOMENTS as MOMENTS_FILE
from otamerge.curvature.moments import OPTIMIZER_KEY


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def held_out_prompts(n_eval: int, seed: int) -> set[str]:
    return {p for t in TASKS for p, _ in eval_set(t, n_eval, seed)}


def mixture_sampler(tasks: list[str], restricted: bool, exclude: set[str],
                    alternative: float = 0.0) -> Callable[[random.Random], Example]:
    samplers = [train_sampler(t, restricted, exclude, alternative) for t in tasks]
    return lambda rng: rng.choice(samplers)(rng)


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    sample: Callable[[random.Random], Example],
    settings: TrainSettings,
    seed: int,
    replay: Callable[[random.Random], Example] | None = None,
    desc: str = "train",
    encode: Callable | None = None,
) -> torch.optim.AdamW:
    """Train in place with AdamW; returns the optimizer, whose state holds the moments.

    ``encode(tokenizer, examples)`` gives (input_ids, attention_mask or None, labels) with
    the loss on the answer: a task family's encoding (``otamerge.families``; default the
    demo's, BOS + prompt + answer + EOS in character tokens)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    if encode is None:
        from otamerge.families import get_family

        encode = get_family("tiny").encode
    opt = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, settings.warmup, settings.steps)
    )
    n_replay = round(settings.batch_size * settings.replay_fraction) if replay else 0
    model.train()
    bar = tqdm(range(settings.steps), desc=desc, mininterval=2.0)
    for _ in bar:
        batch = [sample(rng) for _ in range(settings.batch_size - n_replay)]
        batch += [replay(rng) for _ in range(n_replay)] if replay else []
        ids, mask, labels = encode(tokenizer, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return opt


def exp_avg_sq_by_name(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's second moments keyed by the model's parameter names."""
    out = {}
    for name, p in model.named_parameters():
        state = opt.state.get(p)
        if state is None or "exp_avg_sq" not in state:
            raise RuntimeError(f"parameter {name} has no exp_avg_sq: was it trained?")
        out[name] = state["exp_avg_sq"].detach().to(torch.float32).contiguous().clone()
    return out


def save_moments(model: torch.nn.Module, opt: torch.optim.AdamW, out_dir: Path, settings: TrainSettings) -> None:
    """Write ``export/exp_avg_sq.safetensors`` with the step count and betas as metadata:
    raw moments carry Adam's bias factor 1 - beta2^t, so the step count is needed to
    correct them later."""
    moments = exp_avg_sq_by_name(model, opt)
    step = int(next(iter(opt.state.values()))["step"])
    state = {"step": step, "betas": list(settings.betas), "lr": settings.lr, "optimizer": "torch.optim.AdamW"}
    path = out_dir / MOMENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors keeps metadata in a hash map, so the order of
    # several keys in the header (and so the file's bytes) varies from run to run.
    save_file(moments, str(path), metadata={OPTIMIZER_KEY: json.dumps(state, sort_keys=True)})
