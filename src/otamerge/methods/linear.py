"""Linear merging: a weighted average of the models' weights (mergekit's `linear`)."""

from __future__ import annotations

import torch

from otamerge.methods.base import MergeMethod, Param, TensorInputs


def linear(inputs: TensorInputs) -> torch.Tensor:
    weights = [p["weight"] for p in inputs.model_params]
    acc = torch.zeros_like(inputs.models[0])
    for x, w in zip(inputs.models, weights):
        acc.add_(x * w)
    if inputs.params["normalize"]:
        acc.div_(sum(torch.tensor(weights, dtype=acc.dtype).tolist()))
    return acc


METHODS = (
    MergeMethod(
        name="linear",
        params=(Param("weight", per_model=True), Param("normalize", True, kind=bool)),
        merge=linear,
        base="ignored",
        description="weighted average of the listed models",
    ),
)
