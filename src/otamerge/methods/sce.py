"""SCE (select, calculate, erase), defined as mergekit 0.1.5 defines it.

For task vectors t_i = w_i - w_0:
- select: with ``select_topk`` < 1, keep (in every t_i) the entries whose variance across
  the models is among the top ``select_topk`` fraction of the entries of nonzero variance;
- calculate: each model's weight a_i = mean(t_i^2) / sum_j mean(t_j^2), or 1/n where that
  sum is below 1e-6 (task vectors of fine-tunes usually are: then the weights are equal);
- erase: an entry of t_i counts where its sign is the sign of sum_j t_j (TIES' election);
    merged = w_0 + sum_i a_i m_i t_i / max(sum_i a_i m_i, 1e-6).

mergekit 0.1.5 takes only ``select_topk`` and ``int8_mask`` and ignores anything else a
config gives sce (its parameter_resolver.py reads only a method's declared parameters):
the paper's sce config passes ``density`` and ``weight``, which are therefore accepted
here and have no effect. Ties in the top-k selection go to lower flat indices first.
"""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs
from otamerge.methods.sparsify import RADIX_CHUNK, top_k_mask
from otamerge.methods.consensus import agreeing


def variance_across(tvs: list[torch.Tensor]) -> torch.Tensor:
    """Flat population variance across the models of each entry, a slice at a time (a
    stack of whole task vectors would copy every model once more)."""
    flat = [t.reshape(-1) for t in tvs]
    return torch.cat([torch.var(torch.stack([f[a:a + RADIX_CHUNK] for f in flat]), dim=0, unbiased=False)
                      for a in range(0, flat[0].numel(), RADIX_CHUNK)])


def select_mask(tvs: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """Flat mask of the top ``fraction`` of the entries of nonzero variance."""
    var = variance_across(tvs)
    k = int(int(torch.count_nonzero(var)) * fraction) if fraction > 0 else 0
    return top_k_mask(var, k)


def model_weights(tvs: list[torch.Tensor]) -> torch.Tensor:
    """mean(t_i^2), normalised to sum 1; equal weights where the sum is below 1e-6."""
    weights = torch.stack([t.square().mean() for t in tvs])
    total = weights.sum().item()
    if abs(total) < 1e-6:
        return torch.ones_like(weights) / len(tvs)
    return weights / total


def sce(inputs: TensorInputs) -> torch.Tensor:
    base = inputs.base
    tvs = [x.sub_(base) if inputs.owned else x - base for x in inputs.models]
    if inputs.params["select_topk"] < 1:
        mask = select_mask(tvs, inputs.params["select_topk"])
        for t in tvs:
            t.mul_(mask.view(t.shape))  # (a dropped negative entry stays -0.0, as in mergekit)
    weights = model_weights(tvs)
    total = tvs[0].clone()
    for t in tvs[1:]:  # the order in which mergekit's stacked .sum(0) adds
        total.add_(t)
    positive = total >= 0
    merged = divisor = None
    for t, w in zip(tvs, weights):
        kept = agreeing(t, positive).to(t.dtype).mul_(w)  # a_i where t_i agrees, else 0
        merged = t.mul_(kept) if merged is None else merged.add_(t.mul_(kept))
        divisor = kept if divisor is None else divisor.add_(kept)
    return merged.div_(divisor.clamp_(min=1e-6)).add_(base)


IMPLEMENTS = {"sce": Implementation(sce, whole_tensor=lambda p, mp: True)}  # variance top-k over the tensor
