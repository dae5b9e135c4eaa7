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
from otamerge.methods.base import Implementation, TensorInputs, compute_dtype
from otamerge.methods.catalog import sparsifies
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


def _whole_tensor(params: dict[str, Any], model_params: list[dict[str, Any]]) -> bool:
    return sparsifies(model_params)


# name -> (sparsification, sign consensus)
_FAMILY = {
    "task_arithmetic": (None, False), "ties": ("magnitude", True), "dare_ties": ("random", True),
    "dare_linear": ("random", False), "breadcrumbs": ("breadcrumbs", False), "breadcrumbs_ties": ("breadcrumbs", True),
    "della": ("della", True), "della_linear": ("della", False),
}
IMPLEMENTS = {
    name: Implementation(task_arithmetic_family(kind, consensus),
                         whole_tensor=_whole_tensor if kind else (lambda p, mp: False), stored_inputs=True)
    for name, (kind, consensus) in _FAMILY.items()
}
