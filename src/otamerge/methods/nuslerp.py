"""NuSLERP, defined as mergekit 0.1.5 defines it: SLERP of two models by their weights.

Two models (or, with a base, their task vectors) ``v0`` and ``v1``, at ``t = w_1 / (w_0 +
w_1)`` (0.5 where the weights sum to about 0), each flattened (default), or each row along
its last axis, or each column (``nuslerp_row_wise``, mergekit's name for it):

    cos theta = <v0 / |v0|, v1 / |v1|>            (norms at least 1e-7)
    merged    = (sin((1 - t) theta) v0 + sin(t theta) v1) / sin theta
    merged    = (1 - t) v0 + t v1                 where 1 - cos^2 theta <= 1e-16

plus the base where there is one. The operations are mergekit's, in its order: the same
bits. Whole tensors (norms span them, or their rows when not flattened).
"""

from __future__ import annotations

import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import Implementation, TensorInputs

_EPS = 1e-8


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-7)


def _interpolate(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    cos = torch.sum(_unit(v0) * _unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= _EPS ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp(inputs: TensorInputs) -> torch.Tensor:
    models, base, p = inputs.models, inputs.base, inputs.params
    if len(models) != 2:
        raise OtaMergeError(f"tensor {inputs.name}: nuslerp merges exactly two models besides the base "
                            f"(got {len(models)})")
    w0, w1 = (mp["weight"] for mp in inputs.model_params)
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    row_wise, flatten = p["nuslerp_row_wise"], p["nuslerp_flatten"]
    if base is None:
        return _interpolate(t, models[0], models[1], row_wise, flatten)
    return base + _interpolate(t, models[0] - base, models[1] - base, row_wise, flatten)


IMPLEMENTS = {
    "nuslerp": Implementation(nuslerp, whole_tensor=lambda p, mp: True),  # norms over the tensor, its rows or columns
}
