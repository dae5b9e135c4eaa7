"""A (prompt, answer) pair as a chat model sees it: its tokenizer's own chat template.

Training and scoring share one encoding: the user message through the chat template
with the generation prompt, then the answer's tokens and the end-of-turn token. Only the
answer and the end of turn carry a loss, and only they are compared in token accuracy (``families.token_accuracy``).
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE = -100


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def make_batch(tokenizer, examples: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded; labels only on answers and EOS."""
    rows = [(prompt_ids(tokenizer, p), answer_ids(tokenizer, a)) for p, a in examples]
    width = max(len(p) + len(a) for p, a in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(a)
    return ids, mask, labels


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy answers to ``prompts``, cut at the end of turn, stripped of surrounding space.

    Batches are left-padded with an attention mask, as ``generate`` expects."""
    out = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        for row in gen[:, width:].tolist():
            row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out
