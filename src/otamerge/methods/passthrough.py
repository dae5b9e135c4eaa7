"""Passthrough, as mergekit 0.1.5 defines it: one model's tensors, optionally scaled."""

from __future__ import annotations

import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import Implementation, TensorInputs


def passthrough(inputs: TensorInputs) -> torch.Tensor:
    if len(inputs.models) != 1:
        raise OtaMergeError(f"tensor {inputs.name}: passthrough takes exactly one model (got {len(inputs.models)})")
    scale = inputs.model_params[0]["scale"]
    return inputs.models[0] if scale is None else inputs.models[0] * scale


IMPLEMENTS = {"passthrough": Implementation(passthrough)}
