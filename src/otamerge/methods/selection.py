"""Top-k and bottom-k selection over a tensor that is only ever seen slice by slice.

The same masks as sparsify.top_k_mask / bottom_k_mask (ties to lower flat indices
first), without the whole tensor: the threshold and the counts of the entries beyond and
at it come from one radix select (two passes over the slices, any number of cuts), then
each slice's mask is its entries beyond the threshold plus the first entries equal to
it, counted across the slices in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from otamerge.ffg.threshold import Chunks, rank_counts

SliceMask = Callable[[torch.Tensor], torch.Tensor]  # next slice's values -> its bool mask


@dataclass(frozen=True)
class Cut:
    """Keep the values beyond ``thr`` (above it if ``largest``, else below), then the first
    ``ties`` values equal to it."""

    thr: float
    largest: bool
    ties: int = 0

    def start(self) -> SliceMask:
        """A fresh pass: call it on the slices in order (it counts the ties kept so far)."""
        left = self.ties

        def mask(part: torch.Tensor) -> torch.Tensor:
            nonlocal left
            m = part > self.thr if self.largest else part < self.thr
            if left > 0:
                idx = torch.nonzero(part == self.thr).flatten()[:left]
                m[idx] = True
                left -= idx.numel()
            return m

        return mask


EVERYTHING = Cut(-math.inf, True)  # (the values are non-negative, never NaN)
NOTHING = Cut(-math.inf, False)


def cuts(chunks: Chunks, n: int, wanted: list[tuple[int, bool]]) -> list[Cut]:
    """The cut keeping the k largest (``largest``) or the k smallest of the n non-negative
    values that ``chunks`` yields, for each (k, largest) of ``wanted``."""
    inner = [(k, largest) for k, largest in wanted if 0 < k < n]
    stats = iter(rank_counts(chunks, lambda total: [k if largest else n - k + 1 for k, largest in inner])[0]
                 if inner else ())
    out = []
    for k, largest in wanted:
        if k >= n:
            out.append(EVERYTHING)
        elif k <= 0:
            out.append(NOTHING)
        else:
            thr, greater, equal = next(stats)
            less = n - greater - equal
            out.append(Cut(thr, largest, k - greater if largest else k - less))
    return out
