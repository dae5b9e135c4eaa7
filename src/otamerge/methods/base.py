"""What the engine gives a merge method (a tensor's inputs) and what a method gives the engine
(its per-tensor function); its parameters are declared in ``catalog.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from otamerge.errors import OtaMergeError


@dataclass
class TensorInputs:
    """Everything a method needs to merge one tensor (or a row chunk of it), in the
    compute dtype (fp32, or fp64 where the inputs are fp64); whole tensors for a method
    with ``stored_inputs`` come in their stored dtype instead."""

    name: str
    base: torch.Tensor | None
    models: list[torch.Tensor]
    moments: list[torch.Tensor | None]
    model_params: list[dict[str, Any]]
    params: dict[str, Any]
    seed: int = 0
    owned: bool = False  # the engine's own fresh copies: a method may overwrite them in place
    out_dtype: torch.dtype | None = None  # the output's dtype, for a method that writes it directly


def base_and_one_other(inputs: TensorInputs, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, other) of a method that merges the base with exactly one other model (slerp,
    nearswap, arcee_fusion), or a one-line error naming the tensor."""
    if len(inputs.models) != 1 or inputs.base is None:
        raise OtaMergeError(f"tensor {inputs.name}: {method} merges the base and exactly one other model "
                            f"(got {len(inputs.models)} besides the base)")
    return inputs.base, inputs.models[0]


def compute_dtype(dtypes: list[torch.dtype]) -> torch.dtype:
    """What a merge computes in: fp64 where an input (base or model) is fp64, else fp32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


@dataclass(frozen=True)
class Implementation:
    """The engine's side of a method declared in ``catalog.py``.

    whole_tensor: given the resolved parameters, whether the method must see whole tensors
    (top-k selection, random masks, norms); otherwise the engine may pass row chunks.
    stored_inputs: whole tensors come in their stored dtype, not the compute dtype: the
    method converts them slice by slice (a bf16 embedding is then not held in fp32).
    """

    merge: Callable[[TensorInputs], torch.Tensor]
    whole_tensor: Callable[[dict[str, Any], list[dict[str, Any]]], bool] = lambda p, mp: False
    stored_inputs: bool = False
