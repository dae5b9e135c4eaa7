"""Arcee Fusion, as mergekit 0.1.5 defines it: the other model's changes where they matter most.

For the base ``a`` and the one other model ``b``, per entry, the importance is

    s = |b - a| * KL(softmax(b) || softmax(a))     (softmax and KL over the last axis, +1e-8)

and the entries with s >= median + 1.5 (q3 - q1) of the tensor's importances take b's value,
the others keep a's. Quantiles are order statistics (index floor(q (n - 1)) of the sorted
values). A tensor of more than 10^6 entries has them estimated from 10^6 entries drawn with
replacement, as mergekit does; the draw comes from the merge's seed here (mergekit's from
torch's global generator, which cannot be matched), so on such tensors the two agree in
distribution, not in bits. Importances span rows: whole tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otamerge.methods.base import Implementation, TensorInputs, base_and_one_other

_SAMPLE = 1_000_000
_QUANTILES = (0.25, 0.5, 0.75)


def importance(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    p = F.softmax(b, dim=-1) + 1e-8
    q = F.softmax(a, dim=-1) + 1e-8
    return (b - a).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def quartiles(x: torch.Tensor, seed: int) -> torch.Tensor:
    flat = x.reshape(-1)
    if flat.numel() > _SAMPLE:
        gen = torch.Generator(device=flat.device).manual_seed(seed)
        flat = flat[torch.randint(flat.numel(), (_SAMPLE,), generator=gen, device=flat.device)]
    ordered = torch.sort(flat).values
    return ordered[(torch.tensor(_QUANTILES).to(ordered.device) * (ordered.numel() - 1)).long()]


def arcee_fusion(inputs: TensorInputs) -> torch.Tensor:
    a, b = base_and_one_other(inputs, "arcee_fusion")
    s = importance(b, a)
    q1, median, q3 = quartiles(s, inputs.seed)
    keep = (s >= median + 1.5 * (q3 - q1)).float()
    return a + (b - a) * keep


IMPLEMENTS = {
    "arcee_fusion": Implementation(arcee_fusion, whole_tensor=lambda p, mp: True),  # quantiles of the whole tensor's importances
}
