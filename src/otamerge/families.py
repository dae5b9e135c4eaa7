"""The task families the workflow builds its own models for, one table for both.

``tiny``: the embedded demo (a character-level Llama trained here, BOS + prompt + answer
+ EOS). ``pretrained``: experts fine-tuned from a real pretrained chat model (SmolLM2),
each example through the model's own chat template. A family says how its held-out
prompts and training examples are drawn, how a batch of examples is encoded (loss on the
answer only), and how a model answers prompts; the built-in evaluator and the empirical
Fisher read a family from here instead of knowing the demo's tasks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Example = tuple[str, str]  # (prompt, exact answer)
# (input_ids, attention_mask or None, labels with -100 where no loss)
Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    tasks: Callable[[], Sequence[str]]
    eval_set: Callable[[str, int, int], list[Example]]          # (task, n, seed)
    train_examples: Callable[[str, int, int, int, str], list[Example]]  # (task, count, n_eval, seed, stream)
    max_new_tokens: Callable[[str], int]
    encode: Callable[[object, Sequence[Example]], Batch]     # (tokenizer, examples)
    generate: Callable[[torch.nn.Module, object, Sequence[str], int], list[str]]
    texts: Callable[[int, int, int], tuple[str, str]]  # (n_examples, n_eval, seed) -> (calibration, held-out)


def _tiny() -> Family:
    from otamerge.demo import tasks
    from otamerge.demo.model import make_batch, token_table
    from otamerge.demo.texts import calibration_text, heldout_text
    from otamerge.demo.train import held_out_prompts
    from otamerge.evaluation.builtin import greedy_generate

    def train_examples(task: str, count: int, n_eval: int, seed: int, stream: str) -> list[Example]:
        sample = tasks.train_sampler(task, restricted=False, exclude=held_out_prompts(n_eval, seed))
        rng = random.Random(stream)
        return [sample(rng) for _ in range(count)]

    def encode(tokenizer, examples: Sequence[Example]) -> Batch:
        ids, labels = make_batch(examples, token_table(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                 tokenizer.pad_token_id)
        return ids, None, labels

    return Family("tiny", lambda: list(tasks.TASKS), tasks.eval_set, train_examples,
                  lambda t: tasks.get_task(t).max_answer_len + 1, encode, greedy_generate,
                  lambda n, n_eval, seed: (calibration_text(n, n_eval, seed), heldout_text(n_eval, seed)))


def _pretrained() -> Family:
    from otamerge.pretrained import chat, tasks

    def train_examples(task: str, count: int, n_eval: int, seed: int, stream: str) -> list[Example]:
        sample = tasks.train_sampler(task, n_eval, seed)
        rng = random.Random(stream)
        return [sample(rng) for _ in range(count)]

    return Family("pretrained", lambda: list(tasks.TASKS), tasks.eval_set, train_examples,
                  lambda t: tasks.get_task(t).max_new_tokens, chat.make_batch, chat.greedy_answers, tasks.texts)


FAMILIES = {"tiny": _tiny, "pretrained": _pretrained}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown task family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]()


@torch.no_grad()
def token_accuracy(family: Family, model: torch.nn.Module, tokenizer, examples: Sequence[Example]) -> float:
    """Share of answer tokens (and the closing end token) predicted right under teacher forcing."""
    ids, mask, labels = family.encode(tokenizer, examples)
    pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    scored = target != -100
    return float(((pred == target) & scored).sum() / scored.sum())
