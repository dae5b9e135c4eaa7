"""Perplexity of a model on held-out text files, with a sliding window.

The text is tokenized once (BOS first where the tokenizer has one, so that the first
text token is scored too). The first window of ``max_length`` tokens scores all of its
tokens; each later window ends ``stride`` tokens further and scores only those, with the
window's ``max_length - stride`` earlier tokens as context (Hugging Face's strided
perplexity, without its one unscored token per window). Perplexity is
exp(total NLL / scored tokens); every token after the first is scored exactly once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch
from tqdm import tqdm

from otamerge.errors import OtaMergeError
from otamerge.evaluation.tidy import score_row

BACKEND = "perplexity"
ROWS = 256  # positions whose logits are held at once


def token_ids(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return torch.tensor(ids, dtype=torch.long)


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first scored, end) per window: the first window scores tokens 1..max_length-1;
    each later one the next ``stride`` tokens, after max_length - stride tokens of context."""
    if not 1 <= stride < max_length:
        raise OtaMergeError(f"perplexity: stride {stride} must be at least 1 and below max_length {max_length}")
    out, end = [], min(max_length, n)
    out.append((0, 1, end))
    while end < n:
        first, end = end, min(end + stride, n)
        out.append((max(0, end - max_length), first, end))
    return out


@torch.no_grad()
def negative_log_likelihood(model: torch.nn.Module, ids: torch.Tensor, max_length: int, stride: int,
                            progress: bool = False) -> tuple[float, int]:
    """(sum of NLL in nats, number of scored tokens) of ``ids`` under ``model``."""
    if ids.numel() < 2:
        raise OtaMergeError("perplexity: the text has fewer than two tokens")
    total, count = 0.0, 0
    for begin, first, end in tqdm(windows(ids.numel(), max_length, stride), desc="perplexity", unit="window",
                                  disable=not progress):
        window = ids[begin:end][None]
        # logits at position i predict token i + 1: the scored tokens first..end-1; the fp64
        # log-softmax goes by row blocks (a 3,400-token window of a 49k vocabulary would be
        # 1.3 GB of fp64 logits, twice, at once)
        logits = model(input_ids=window).logits[0, first - begin - 1:-1]
        targets = ids[first:end]
        for r in range(0, len(targets), ROWS):
            block = torch.log_softmax(logits[r:r + ROWS].double(), dim=-1)
            total -= float(block.gather(1, targets[r:r + ROWS, None]).sum())
        count += end - first
    return total, count


def evaluate(model: torch.nn.Module, tokenizer, texts: Mapping[str, str | Path], name: str,
             max_length: int | None = None, stride: int | None = None) -> list[dict]:
    """Tidy rows (metric perplexity, n = scored tokens) for each named text file."""
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = max_length or limit or 2048
    if limit and max_length > limit:
        raise OtaMergeError(f"perplexity: max_length {max_length} exceeds the model's {limit} positions")
    stride = stride or max(1, max_length // 2)  # half the window: every token sees at least that much context
    rows = []
    for task, path in texts.items():
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise OtaMergeError(f"perplexity text {path}: cannot read ({exc})") from None
        nll, count = negative_log_likelihood(model, token_ids(tokenizer, text), max_length, stride, progress=True)
        rows.append(score_row(name, task, "perplexity", math.exp(nll / count), count, BACKEND))
    return rows
