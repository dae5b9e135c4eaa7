"""NearSwap, defined as mergekit 0.1.5 defines it: the base, moved to the other model where
they are close.

Entry by entry, with ``d = |a - b|`` between the base ``a`` and the one other model ``b``:

    w      = clamp(t / max(d, 1e-6), 0, 1)
    merged = w b + (1 - w) a

so entries that differ by at most ``t`` take the other model's value and distant ones stay
near the base. Entry by entry: the merge streams by row chunks.
"""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs, base_and_one_other


def nearswap(inputs: TensorInputs) -> torch.Tensor:
    a, b = base_and_one_other(inputs, "nearswap")
    weight = (inputs.params["t"] / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a


IMPLEMENTS = {"nearswap": Implementation(nearswap)}
