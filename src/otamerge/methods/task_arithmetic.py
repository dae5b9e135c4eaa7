"""The task-arithmetic family, defined as mergekit 0.1.5 defines it.

task vector t_i = w_i - w_0; optional per-tensor sparsification of each t_i (magnitude
top-k for TIES, random drop for DARE, outlier-and-bottom cut for breadcrumbs, a random
drop whose keep probability rises with |t| within each row for DELLA); optional
sign consensus (TIES: the sign of the weighted sum); then
    merged = w_0 + lambda * sum_i weight_i t_i / divisor
with divisor = sum of the weights (of the agreeing models, under consensus) when
``normalize`` is on. A user's mergekit YAML gives the same numbers at fp32.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from otamerge.methods import sparsify, streamed
from otamerge.methods.base import MergeMethod, Param, TensorInputs, compute_dtype
from otamerge.methods.consensus import combine
from otamerge.methods.sparsify import importance, model_generator


def _sparsified(kind: str | None, inputs: TensorInputs, i: int, delta: torch.Tensor) -> torch.Tensor:
    p = inputs.model_params[i]
    rescale = bool(inputs.params["rescale"])
    trim_by = inputs.params.get("trim_by", "magnitude")
    if kind == "magnitude":
        return sparsify.magnitude(delta, p["density"], rescale, importance(trim_by, delta, inputs.moments[i]))
    if kind == "random":
        gen = model_generator(inputs.seed, inputs.name, i)
        return sparsify.dare(delta, p["density"], gen, rescale)
    if kind == "della":
        gen = model_generator(inputs.seed, inputs.name, i)
        return sparsify.della(delta, p["density"], p["epsilon"], gen, rescale)
    if kind == "breadcrumbs":
        scores = importance(trim_by, delta, inputs.moments[i])
        fork = inputs.params.get("breadcrumbs_compat", "mergekit") == "fork"
        return sparsify.breadcrumbs(delta, p["density"], p["gamma"], rescale, scores, fork)
    return delta


def _whole(inputs: TensorInputs, kind: str | None, consensus: bool, compute: torch.dtype) -> torch.Tensor:
    """On whole tensors in the compute dtype: for fp64 inputs, and NaN or negative scores."""
    def to(t):
        return None if t is None else t.to(compute)
    inputs = replace(inputs, base=to(inputs.base), models=[to(x) for x in inputs.models],
                     moments=[to(v) for v in inputs.moments])
    base = inputs.base
    # one task vector at a time and in place: a few tensor-sized temporaries, not a
    # stack of every expert's (TIES on a 32000 x 4096 embedding holds 4 copies, not 12)
    weights = [float(torch.tensor(p["weight"], dtype=compute)) for p in inputs.model_params]
    deltas = [_sparsified(kind, inputs, i, x.sub_(base) if inputs.owned else x - base).mul_(w)
              for i, (x, w) in enumerate(zip(inputs.models, weights))]
    return combine(deltas, weights, base, inputs.params, consensus)


def task_arithmetic_family(sparsification: str | None, consensus: bool):
    def merge(inputs: TensorInputs) -> torch.Tensor:
        compute = compute_dtype([t.dtype for t in [inputs.base, *inputs.models]])
        if compute == torch.float32:  # (the radix select ranks fp32)
            try:
                return streamed.merge(inputs, sparsification, consensus, compute)
            except streamed.Unsliceable:
                pass
        return _whole(inputs, sparsification, consensus, compute)

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
        stored_inputs=True,
        description=description,
    )


# breadcrumbs_compat: fork reproduces the paper's fork, which resets to the base every tensor
# with int(gamma * n) == 0 (sparsify.breadcrumbs); mergekit 0.1.5's definition is the default
_GAMMA = (Param("gamma", 0.01, per_model=True),
          Param("breadcrumbs_compat", "mergekit", kind=str, choices=("mergekit", "fork")))

# DELLA: keep probabilities from density - epsilon (smallest |delta| of a row) to density + epsilon
_EPSILON = (Param("epsilon", 0.15, per_model=True),)

METHODS = (
    _method("task_arithmetic", None, False, False, False, "base + sum of weighted task vectors"),
    _method("ties", "magnitude", True, True, False, "top-k by magnitude, sign election, disjoint mean"),
    _method("dare_ties", "random", True, False, True, "random drop with L1 rescale, sign election"),
    _method("dare_linear", "random", False, False, True, "random drop with L1 rescale"),
    _method("breadcrumbs", "breadcrumbs", False, False, False, "drop outliers and small entries", _GAMMA),
    _method("breadcrumbs_ties", "breadcrumbs", True, False, False,
            "breadcrumbs then sign election", _GAMMA),
    _method("della", "della", True, True, True, "magnitude-ranked random drop (MAGPRUNE), sign election", _EPSILON),
    _method("della_linear", "della", False, False, True, "magnitude-ranked random drop (MAGPRUNE)", _EPSILON),
)
