"""Linear merging: a weighted average of the models' weights (mergekit's `linear`)."""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs


def linear(inputs: TensorInputs) -> torch.Tensor:
    first = inputs.models[0]
    weights = torch.tensor([p["weight"] for p in inputs.model_params], dtype=first.dtype, device=first.device)
    acc = torch.zeros_like(first)
    for x, w in zip(inputs.models, weights):
        acc.addcmul_(x, w)  # one rounding per model, in the order the models are listed
    if inputs.params["normalize"]:
        acc.div_(weights.sum())
    return acc


IMPLEMENTS = {"linear": Implementation(linear)}
