"""What a merge method declares: its parameters, its inputs, and a per-tensor function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A parameter of a merge method. ``per_model`` parameters may be set for each model
    (a model's value overrides the global one, as in mergekit)."""

    name: str
    default: Any = REQUIRED
    per_model: bool = False
    kind: type = float
    choices: tuple = ()


@dataclass
class TensorInputs:
    """Everything a method needs to merge one tensor (or a row chunk of it), in the
    compute dtype (fp32, or fp64 where the inputs are fp64)."""

    name: str
    base: torch.Tensor | None
    models: list[torch.Tensor]
    moments: list[torch.Tensor | None]
    model_params: list[dict[str, Any]]
    params: dict[str, Any]
    seed: int = 0
    owned: bool = False  # the engine's own fresh copies: a method may overwrite models in place


@dataclass(frozen=True)
class MergeMethod:
    """One entry of the registry.

    base: "required", "optional" or "ignored" (the base model is then just not used).
    moments: given the resolved parameters, whether each model needs a
    ``preconditioner_path`` (OTA always; TIES-family trimming by curvature).
    whole_tensor: given the resolved parameters, whether the method must see whole tensors
    (top-k selection, random masks, norms); otherwise the engine may pass row chunks.
    """

    name: str
    params: tuple[Param, ...]
    merge: Callable[[TensorInputs], torch.Tensor]
    base: str = "required"
    moments: Callable[[dict[str, Any], list[dict[str, Any]]], bool] = lambda p, mp: False
    whole_tensor: Callable[[dict[str, Any], list[dict[str, Any]]], bool] = lambda p, mp: False
    description: str = ""
