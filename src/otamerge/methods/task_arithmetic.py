"""The task-arithmetic family, defined as mergekit 0.1.5 defines it.

task vector t_i = w_i - w_0; optional per-tensor sparsification of each t_i (magnitude
top-k for TIES, random drop for DARE, outlier-and-bottom cut for breadcrumbs); optional
sign consensus (TIES: the sign of the weighted sum); then
    merged = w_0 + lambda * sum_i weight_i t_i / divisor
with divisor = sum of the weights (of the agreeing models, under consensus) when
``normalize`` is on. A user's mergekit YAML gives the same numbers at fp32.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from otamerge.methods import sparsify
from otamerge.methods.base import MergeMethod, Param, TensorInputs


def model_generator(seed: int, tensor: str, model_index: int) -> torch.Generator:
    """A CPU generator per (seed, tensor, model): random masks do not depend on the order
    in which tensors are processed, on chunking, or on the device."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{tensor}/{model_index}".encode()))


def agreeing(weighted: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Entries whose sign is the elected one (``positive``: the sum is >= 0); zero entries
    never agree, so they do not count in the divisor."""
    return torch.where(positive, weighted > 0, weighted < 0)


def importance(trim_by: str, delta: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor | None:
    """What trimming ranks entries by: None for |delta| (mergekit's rule); v * delta^2 for
    fisher (v: Adam's second moment) and sparsegpt (v: the OBS importance, hessians.py)."""
    if trim_by == "magnitude" or v is None:
        return None
    return delta.square().mul_(v)


def _sparsified(kind: str | None, inputs: TensorInputs, i: int, delta: torch.Tensor) -> torch.Tensor:
    p = inputs.model_params[i]
    rescale = bool(inputs.params["rescale"])
    trim_by = inputs.params.get("trim_by", "magnitude")
    if kind == "magnitude":
        return sparsify.magnitude(delta, p["density"], rescale, importance(trim_by, delta, inputs.moments[i]))
    if kind == "random":
        gen = model_generator(inputs.seed, inputs.name, i)
        return sparsify.dare(delta, p["density"], gen, rescale)
    if kind == "breadcrumbs":
        scores = importance(trim_by, delta, inputs.moments[i])
        fork = inputs.params.get("breadcrumbs_compat", "mergekit") == "fork"
        return sparsify.breadcrumbs(delta, p["density"], p["gamma"], rescale, scores, fork)
    return delta


def _running_sum(terms):
    """Sum in order, into the first term (the order torch.stack(...).sum(0) adds in)."""
    total = None
    for t in terms:
        total = t if total is None else total.add_(t)
    return total


def task_arithmetic_family(sparsification: str | None, consensus: bool):
    def merge(inputs: TensorInputs) -> torch.Tensor:
        # one task vector at a time and in place: a few tensor-sized temporaries, not a
        # stack of every expert's (TIES on a 32000 x 4096 embedding holds 4 copies, not 12)
        base = inputs.base
        weights = [float(torch.tensor(p["weight"], dtype=base.dtype)) for p in inputs.model_params]
        deltas = [_sparsified(sparsification, inputs, i, x.sub_(base) if inputs.owned else x - base).mul_(w)
                  for i, (x, w) in enumerate(zip(inputs.models, weights))]
        if consensus:
            positive = _running_sum(d.clone() if i == 0 else d for i, d in enumerate(deltas)) >= 0
            mixed = divisor = None
            for d, w in zip(deltas, weights):  # sums in the order of the models
                agree = agreeing(d, positive)
                mixed = d.mul_(agree) if mixed is None else mixed.add_(d.mul_(agree))
                divisor = agree.to(base.dtype).mul_(w) if divisor is None else divisor.add_(agree, alpha=w)
            divisor.masked_fill_(divisor == 0, 1)
        else:
            mixed = _running_sum(deltas)
            divisor = _running_sum(torch.tensor(w, dtype=base.dtype) for w in weights)
            if divisor.abs() < 1e-8:
                divisor.fill_(1)
        if inputs.params["normalize"]:
            mixed.div_(divisor.to(mixed.device))
        if inputs.params["lambda"] != 1:
            mixed.mul_(inputs.params["lambda"])
        return mixed.add_(base)

    return merge


def _sparsifies(params: dict[str, Any], model_params: list[dict[str, Any]]) -> bool:
    return any(p.get("density", 1.0) < 1 for p in model_params)


_COMMON = (
    Param("weight", per_model=True),
    Param("density", 1.0, per_model=True),
    Param("int8_mask", False, kind=bool),  # accepted for mergekit configs; masks are exact anyway
    Param("lambda", 1.0),
)


TRIM_BY = ("magnitude", "fisher", "sparsegpt")
# trimming by curvature: per model, its exp_avg_sq (fisher) or the base's OBS importance file
_TRIM = (Param("trim_by", "magnitude", kind=str, choices=TRIM_BY),
         Param("preconditioner_path", None, per_model=True, kind=str))


def _trims_by_curvature(params: dict[str, Any], model_params: list[dict[str, Any]]) -> bool:
    return params.get("trim_by", "magnitude") != "magnitude" and _sparsifies(params, model_params)


def _method(name: str, sparsification: str | None, consensus: bool, normalize: bool, rescale: bool,
            description: str, extra: tuple[Param, ...] = ()) -> MergeMethod:
    ranked = sparsification in ("magnitude", "breadcrumbs")  # DARE drops at random: nothing to rank
    return MergeMethod(
        name=name,
        params=_COMMON + (Param("normalize", normalize, kind=bool), Param("rescale", rescale, kind=bool)) + extra
        + (_TRIM if ranked else ()),
        merge=task_arithmetic_family(sparsification, consensus),
        moments=_trims_by_curvature if ranked else (lambda p, mp: False),
        whole_tensor=_sparsifies if sparsification else (lambda p, mp: False),
        description=description,
    )


# breadcrumbs_compat: fork reproduces the paper's fork, which resets to the base every tensor
# with int(gamma * n) == 0 (sparsify.breadcrumbs); mergekit 0.1.5's definition is the default
_GAMMA = (Param("gamma", 0.01, per_model=True),
          Param("breadcrumbs_compat", "mergekit", kind=str, choices=("mergekit", "fork")))

METHODS = (
    _method("task_arithmetic", None, False, False, False, "base + sum of weighted task vectors"),
    _method("ties", "magnitude", True, True, False, "top-k by magnitude, sign election, disjoint mean"),
    _method("dare_ties", "random", True, False, True, "random drop with L1 rescale, sign election"),
    _method("dare_linear", "random", False, False, True, "random drop with L1 rescale"),
    _method("breadcrumbs", "breadcrumbs", False, False, False, "drop outliers and small entries", _GAMMA),
    _method("breadcrumbs_ties", "breadcrumbs", True, False, False,
            "breadcrumbs then sign election", _GAMMA),
)
