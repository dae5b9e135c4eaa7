"""RAM and RAM+ (tensor-local), Reinforced Agent Merging (arXiv 2601.13572), as mergekit
0.1.5 defines them.

With task vectors t_i = w_i - w_0, an entry counts for model i where |t_i| > ``epsilon``;
c is the number of models that count at an entry. An entry only one model changes takes
that model's value whole; an entry several models change takes their mean over those c:

    RAM:   merged = w_0 + sum_i [c = 1] z_i + [c > 1] z_i / c,    z_i = t_i [|t_i| > epsilon]

RAM+ (``ramplus_tl``) scales each model's unique entries by 1 + r min(max(rho_i, 0), alpha),
rho_i = (entries model i shares) / (entries only model i changes), counted over the tensor.
The operations are mergekit's, in its order (stacked task vectors summed over the models):
the same bits. RAM is entry by entry (streams by row chunks); RAM+ counts over whole tensors.
"""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs


def _masked(inputs: TensorInputs):
    """(z, counts, kept, shared, unique) over the flattened task vectors (models x entries)."""
    base, models = inputs.base, inputs.models
    tv = torch.stack([m - base for m in models], dim=0).view(len(models), -1)
    kept = tv.abs() > inputs.params["epsilon"]
    counts = kept.sum(dim=0, keepdim=True)
    return tv * kept, counts, kept, counts > 1, counts == 1


def ram(inputs: TensorInputs) -> torch.Tensor:
    if not inputs.models:
        return inputs.base
    z, counts, _, shared, unique = _masked(inputs)
    merged = (z * unique + z * shared / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return inputs.base + merged.reshape_as(inputs.base)


def ramplus_tl(inputs: TensorInputs) -> torch.Tensor:
    if not inputs.models:
        return inputs.base
    p = inputs.params
    z, counts, kept, shared, unique = _masked(inputs)
    rho = (kept & shared).sum(dim=1) / (kept & unique).sum(dim=1).clamp(min=p["epsilon"])
    scale = 1 + p["r"] * rho.clamp(min=0, max=p["alpha"])
    merged = (z * unique * scale.unsqueeze(-1) + z * shared / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return inputs.base + merged.reshape_as(inputs.base)


IMPLEMENTS = {
    "ram": Implementation(ram),
    # each model's shared and unique entries counted over the tensor
    "ramplus_tl": Implementation(ramplus_tl, whole_tensor=lambda p, mp: True),
}
