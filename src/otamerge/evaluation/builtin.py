"""The built-in evaluator of the task families (``otamerge.families``): exact match
under greedy decoding, per task.

Definition of exact match (shared with the other backends' demo tasks): the text the
model generates after ``BOS + prompt`` (a pretrained family: the prompt as a user turn
through the model's chat template, answer cut at the end of turn), greedily, up to the first EOS and within
``max_answer_len + 1`` new tokens, must equal the answer exactly. Next to it a graded
score, ``token_accuracy``: the fraction of answer tokens (and the closing EOS) that the
model predicts correctly under teacher forcing; it separates models that exact match
rates the same.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from otamerge.demo.model import token_table
from otamerge.errors import OtaMergeError
from otamerge.families import Example, Family, answer_token_hits, get_family, validation_set
from otamerge.evaluation.tidy import score_row

Generate = Callable[[Sequence[str], int], list[str]]

BACKEND = "builtin"
TEST, VALIDATION = "test", "validation"  # the held-out prompts, and prompts disjoint from them


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    if len(predictions) != len(answers) or not answers:
        raise ValueError("exact_match needs as many predictions as answers, at least one")
    return sum(p == a for p, a in zip(predictions, answers)) / len(answers)


def score_task(generate: Generate, examples: Sequence[Example], max_new_tokens: int) -> float:
    """Exact-match accuracy of ``generate`` on ``examples``."""
    prompts = [p for p, _ in examples]
    return exact_match(generate(prompts, max_new_tokens), [a for _, a in examples])


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``prompts``, cut at the first EOS.

    Prompts of one length are decoded as one batch, so no padding (and no attention
    mask) is ever needed: the result is the same as decoding each prompt alone.
    """
    table = token_table(tokenizer)
    inverse = {v: k for k, v in table.items()}
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[str] = [""] * len(prompts)
    for idx in by_len.values():
        ids = torch.tensor([[bos] + [table[c] for c in prompts[i]] for i in idx])
        done = torch.zeros(len(idx), dtype=torch.bool)
        gen = []
        for _ in range(max_new_tokens):
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1)
            gen.append(nxt)
            done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
        rows = torch.stack(gen, dim=1).tolist()
        for i, row in zip(idx, rows):
            row = row[: row.index(eos)] if eos in row else row
            out[i] = "".join(inverse.get(t, "\ufffd") for t in row)
    return out


def load_model(model_dir: str | Path):
    """Model (fp32, eval mode) and tokenizer of a Hugging Face folder, offline."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise OtaMergeError(f"{model_dir}: not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    return model.eval(), tokenizer


def score_examples(fam: Family, model: torch.nn.Module, tokenizer, examples: Sequence[Example],
                   max_new_tokens: int) -> dict[str, float]:
    """Exact match and token accuracy of one task's examples, from one teacher-forced pass.

    An example whose every answer token and closing end token are the model's argmax
    under teacher forcing is, by definition of greedy decoding, answered exactly (each
    greedy step sees the same context as teacher forcing until the first miss); only
    the others are decoded, which on a good model is a small share of the prompts."""
    right, scored = answer_token_hits(fam, model, tokenizer, examples)
    # the answer must also fit the decoding budget (scored counts the end token)
    whole = ((right == scored) & (scored - 1 <= max_new_tokens)).tolist()
    rest = [ex for ex, w in zip(examples, whole) if not w]
    answers = fam.generate(model, tokenizer, [p for p, _ in rest], max_new_tokens) if rest else []
    hits = sum(whole) + sum(got == a for got, (_, a) in zip(answers, rest))
    return {"exact_match": hits / len(examples), "token_accuracy": float(right.sum() / scored.sum())}


def evaluate(
    model: torch.nn.Module, tokenizer, tasks: Sequence[str], n: int, seed: int, name: str, family: str = "tiny",
    split: str = TEST,
) -> list[dict]:
    """Tidy score rows (model, task, metric, score, n, backend) for each task of ``family``
    (``tiny``: the demo's; ``pretrained``: the chat tasks of a real pretrained family), on
    its held-out test prompts or (``split`` validation, backend ``validation``) on as many
    prompts disjoint from them; a task with no such prompt gives no validation row."""
    # the workflow passes its outputs' names: a renamed output must not score the wrong prompts
    if split not in (TEST, VALIDATION):
        raise OtaMergeError(f"split {split!r}: use {TEST!r} or {VALIDATION!r}")
    fam = get_family(family)
    rows = []
    for task in tasks:
        examples = fam.eval_set(task, n, seed) if split == TEST else validation_set(fam, task, n, seed)
        if not examples:
            continue
        scores = score_examples(fam, model, tokenizer, examples, fam.max_new_tokens(task))
        rows += [score_row(name, task, m, s, len(examples), BACKEND if split == TEST else VALIDATION)
                 for m, s in scores.items()]
    return rows
