"""Exact model-wide thresholds for several densities in two streaming passes.

Saliencies are non-negative fp32, and for non-negative IEEE floats the order of the
values equals the order of their bit patterns read as integers. A radix select over
those bits finds the exact k-th largest value with two histogram passes, whatever the
number of densities: pass 1 counts the high 16 bits, pass 2 the low 16 bits of only
those entries whose high bits fall in a bin that holds one of the wanted ranks. Memory
is two 65536-bin histograms per density, never the model.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

Chunks = Callable[[], Iterable[torch.Tensor]]  # a fresh pass over the saliency chunks
BINS = 1 << 16


def _bits(s: torch.Tensor) -> torch.Tensor:
    s = s.to(torch.float32).abs().reshape(-1)  # abs: -0.0 has the sign bit set
    return s.view(torch.int32).to(torch.int64)


def keep_count(density: float, total: int) -> int:
    """How many entries a density keeps: round(density * total), at least one."""
    return min(total, max(1, round(density * total)))


def _select(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """(bin, rank within the bin) of the k-th largest entry, counting from the top bin."""
    from_top = torch.cumsum(hist.flip(0), 0)
    idx = int(torch.searchsorted(from_top, torch.tensor(k)))
    above = int(from_top[idx - 1]) if idx > 0 else 0
    return BINS - 1 - idx, k - above


def exact_thresholds(chunks: Chunks, densities: list[float]) -> tuple[list[float], int]:
    """The k-th largest saliency for each density (k = keep_count), and the total count.

    Keeping ``s >= threshold`` keeps k entries plus any ties at the threshold.
    """
    return kth_largest(chunks, lambda total: [keep_count(d, total) for d in densities])


def kth_largest(chunks: Chunks, ranks: Callable[[int], list[int]]) -> tuple[list[float], int]:
    """The k-th largest value of non-negative chunks for each k in ``ranks(total)``
    (1 <= k <= total), and the total count."""
    stats, total = rank_counts(chunks, ranks)
    return [value for value, _, _ in stats], total


def rank_counts(chunks: Chunks, ranks: Callable[[int], list[int]]) -> tuple[list[tuple[float, int, int]], int]:
    """Like kth_largest, with each value's counts (value, entries greater, entries equal):
    a top-k selection then knows how many ties at the threshold it keeps without another
    pass over the chunks. Values are compared as their absolute values."""
    hi = None  # on the chunks' device (CPU or GPU)
    total = 0
    for s in chunks():
        b = _bits(s)
        total += b.numel()
        counts = torch.bincount(b >> 16, minlength=BINS)
        hi = counts if hi is None else hi + counts
    if total == 0:
        return [(math.inf, 0, 0) for _ in ranks(0)], 0
    hi = hi.cpu()
    wanted = [(k, *_select(hi, k)) for k in ranks(total)]
    lo = {b: torch.zeros(BINS, dtype=torch.int64) for _, b, _ in wanted}
    for s in chunks():
        b = _bits(s)
        high = b >> 16
        for bin_, hist in lo.items():
            sel = b[high == bin_] & 0xFFFF
            if sel.numel():
                hist += torch.bincount(sel, minlength=BINS).cpu()
    out = []
    for k, bin_, rank in wanted:
        low, left = _select(lo[bin_], rank)  # left: the rank among the entries equal to the value
        bits = torch.tensor([(bin_ << 16) | low], dtype=torch.int32)
        out.append((float(bits.view(torch.float32)), k - left, int(lo[bin_][low])))
    return out, total
