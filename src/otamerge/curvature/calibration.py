"""Calibration text: a .txt file, or .jsonl with a "text" field per line, cut into seeded
windows of tokens (the base's Hessians for OBS importance; the empirical Fisher reads the
same files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from otamerge.errors import OtaMergeError


@dataclass(frozen=True)
class Calibration:
    """Calibration set: ``samples`` windows of ``seqlen`` tokens at seeded offsets in the
    tokenized text (a .txt file, or .jsonl with a "text" field per line)."""

    path: str
    samples: int = 32
    seqlen: int = 128
    seed: int = 0


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OtaMergeError(f"calibration file {path}: cannot read ({exc})") from None
    if path.suffix != ".jsonl":
        return raw
    texts = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError):
            raise OtaMergeError(f"calibration file {path}, line {i}: not a JSON object with a \"text\" field") from None
    return "\n\n".join(texts)


def calibration_tokens(tokenizer, cal: Calibration) -> torch.Tensor:
    """(samples, seqlen) token ids."""
    text = read_text(cal.path)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if cal.samples < 1 or cal.seqlen < 1:
        raise OtaMergeError("calibration: samples and seqlen must be at least 1")
    if ids.numel() < cal.seqlen:
        raise OtaMergeError(f"calibration file {cal.path}: {ids.numel()} tokens, fewer than seqlen {cal.seqlen}")
    gen = torch.Generator().manual_seed(cal.seed)
    starts = torch.randint(0, ids.numel() - cal.seqlen + 1, (cal.samples,), generator=gen)
    return torch.stack([ids[s:s + cal.seqlen] for s in starts.tolist()])
