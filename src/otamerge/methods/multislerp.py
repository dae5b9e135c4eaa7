"""Multi-SLERP, defined as mergekit 0.1.5 defines it: barycentric interpolation on a sphere.

With a base model the points are the task vectors t_i = w_i - w_0, else the weights w_i.
Each is flattened and put on the unit sphere (u_i = t_i / (|t_i| + eps)); with weights a_i
(normalised to sum 1 by default):

    m = sum_i a_i u_i / |sum_i a_i u_i|          the weighted mean, back on the sphere
    g = sum_i a_i (u_i - <u_i, m> m)              the mean of the tangent vectors at m
    merged = w_0 + sum_i a_i |t_i| * (m cos|g| + g sin|g| / |g|)     (|g| + eps for |g|)

g vanishes in exact arithmetic (sum_i a_i u_i is parallel to m), so this is the weighted
mean direction at the weighted mean norm; g is kept, as rounding leaves it, to compute
the same operations in the same order as mergekit: the same bits at fp32. One model is
returned as it is. Works on the list of models (no stacked copy of them).
"""

from __future__ import annotations

import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import Implementation, TensorInputs


def _weighted_sum(terms: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * terms[i], each product rounded, added in order (as .sum(0) of
    the stacked products)."""
    total = terms[0] * weights[0]
    for t, w in zip(terms[1:], weights[1:]):
        total.add_(t * w)
    return total


def multislerp(inputs: TensorInputs) -> torch.Tensor:
    models, base, eps = inputs.models, inputs.base, inputs.params["eps"]
    if len(models) == 1:
        return models[0]  # mergekit: nothing to interpolate, the base is not added either
    shape = models[0].shape
    if base is not None:
        models = [x.sub_(base) if inputs.owned else x - base for x in models]
    flat = [x.reshape(-1) for x in models]
    weights = torch.tensor([mp["weight"] for mp in inputs.model_params], dtype=flat[0].dtype)
    weights = weights.to(flat[0].device)
    if inputs.params["normalize_weights"]:
        weights = weights / weights.sum()
    norms = torch.stack([torch.linalg.vector_norm(f) for f in flat])
    units = [f / (n + eps) for f, n in zip(flat, norms)]
    mean = _weighted_sum(units, weights)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(models) == 2:  # mergekit's fallback: the linear interpolation
            mean = _weighted_sum(flat, weights)
        elif not bool((norms == 0).all()):  # (every task vector zero: the base, below)
            raise OtaMergeError(f"tensor {inputs.name}: multislerp of antipodal inputs whose weights cancel "
                                "(their weighted mean direction is zero); change the weights")
        return mean.view(shape).add_(base) if base is not None else mean.view(shape)
    mean.div_(mean_norm)
    # products and sums as mergekit's stacked (u * m).sum(-1) and (tangents * a).sum(0)
    tangent = _weighted_sum([u.sub_((u * mean).sum() * mean) for u in units], weights)
    angle = torch.linalg.vector_norm(tangent) + eps
    result = mean.mul_(torch.cos(angle)).add_(tangent.mul_(torch.sin(angle) / angle))
    result = result.mul_((norms * weights).sum()).view(shape)
    return result.add_(base) if base is not None else result


IMPLEMENTS = {"multislerp": Implementation(multislerp, whole_tensor=lambda p, mp: True)}  # norms over the tensor
