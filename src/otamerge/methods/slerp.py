"""SLERP of two models, defined as mergekit 0.1.5 defines it: per tensor.

The base ``a`` and the one other model ``b``, each tensor flattened, are interpolated on
the great circle through them at ``t`` (0: the base, 1: the other model):

    cos theta = <a / |a|, b / |b|>                 (a norm <= eps counts as 1)
    merged    = sin((1 - t) theta) / sin theta * a + sin(t theta) / sin theta * b
    merged    = (1 - t) a + t b                    where |cos theta| > dot_threshold

in fp32 (fp64 for fp64 inputs). The norms and the dot product are summed over blocks of
2^20 entries, as mergekit does, so that the bits agree with it: the norm is the norm of the
blocks' norms, the dot product the sum of the blocks' dot products.
"""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs, base_and_one_other

_BLOCK = 1 << 20  # entries of one block


def _blocks(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[:, s:s + _BLOCK] for s in range(0, x.shape[1], _BLOCK)]


def _row_norms(x: torch.Tensor, eps: float) -> torch.Tensor:
    parts = torch.stack([torch.linalg.vector_norm(p, dim=1, keepdim=True) for p in _blocks(x)])
    norm = torch.linalg.vector_norm(parts, dim=0)
    return torch.where(norm > eps, norm, 1)


def slerp(inputs: TensorInputs) -> torch.Tensor:
    base, other = base_and_one_other(inputs, "slerp")
    p = inputs.params
    a, b = base.reshape(1, -1), other.reshape(1, -1)  # one row: the whole tensor
    t = torch.tensor([[p["t"]]], dtype=a.dtype, device=a.device)
    if a.shape[1] == 0:
        return ((1 - t) * a + t * b).reshape(base.shape)
    na, nb = _row_norms(a, p["eps"]), _row_norms(b, p["eps"])
    dot = torch.stack([(x / na * (y / nb)).sum(dim=1, keepdim=True)
                       for x, y in zip(_blocks(a), _blocks(b))]).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > p["dot_threshold"]
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    return (coef_a * a + coef_b * b).reshape(base.shape)


IMPLEMENTS = {"slerp": Implementation(slerp, whole_tensor=lambda p, mp: True)}  # norms and the dot product
