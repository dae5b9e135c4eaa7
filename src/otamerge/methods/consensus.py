"""The last step of the task-arithmetic family, entry by entry: sign election, the
(disjoint) weighted mean, lambda and the base. Elementwise only, so that a slice of the
task vectors gives the same bits as the whole tensor."""

from __future__ import annotations

from typing import Any, Iterable

import torch


def agreeing(weighted: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Entries whose sign is the elected one (``positive``: the sum is >= 0); zero entries
    never agree, so they do not count in the divisor."""
    return torch.where(positive, weighted > 0, weighted < 0)


def running_sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum in order, into the first term (the order torch.stack(...).sum(0) adds in)."""
    total = None
    for t in terms:
        total = t if total is None else total.add_(t)
    return total


def combine(deltas: list[torch.Tensor], weights: list[float], base: torch.Tensor,
            params: dict[str, Any], consensus: bool) -> torch.Tensor:
    """base + lambda * sum_i deltas_i / divisor, from the weighted sparsified task vectors
    (overwritten: the result is the first of them)."""
    if consensus:
        positive = running_sum(d.clone() if i == 0 else d for i, d in enumerate(deltas)) >= 0
        mixed = divisor = None
        for d, w in zip(deltas, weights):  # sums in the order of the models
            agree = agreeing(d, positive)
            mixed = d.mul_(agree) if mixed is None else mixed.add_(d.mul_(agree))
            divisor = agree.to(d.dtype).mul_(w) if divisor is None else divisor.add_(agree, alpha=w)
        divisor.masked_fill_(divisor == 0, 1)
    else:
        mixed = running_sum(deltas)
        divisor = running_sum(torch.tensor(w, dtype=mixed.dtype) for w in weights)
        if divisor.abs() < 1e-8:
            divisor.fill_(1)
    if params["normalize"]:
        mixed.div_(divisor.to(mixed.device))
    if params["lambda"] != 1:
        mixed.mul_(params["lambda"])
    return mixed.add_(base)
