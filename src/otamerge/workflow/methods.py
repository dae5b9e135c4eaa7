"""What the workflow asks of each merge method, without importing torch: whether it reads
the base, when it reads curvature, and which parameters may be set per model.

The registry (``otamerge.methods``) is the engine's side of the same facts; a test holds the
two equal, and the schema's method list to this table, so adding a method touches its
module, the registry and this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodTraits:
    base: str                 # required | optional | ignored (as the registry's MergeMethod.base)
    curvature: str            # always (OTA's weights) | trim_by (trim_by: fisher or sparsegpt) | never
    per_model: tuple[str, ...]


_TASK_VECTOR = ("weight", "density")
METHODS: dict[str, MethodTraits] = {
    "linear": MethodTraits("ignored", "never", ("weight",)),
    "task_arithmetic": MethodTraits("required", "never", _TASK_VECTOR),
    "ties": MethodTraits("required", "trim_by", (*_TASK_VECTOR, "preconditioner_path")),
    "dare_ties": MethodTraits("required", "never", _TASK_VECTOR),
    "dare_linear": MethodTraits("required", "never", _TASK_VECTOR),
    "breadcrumbs": MethodTraits("required", "trim_by", (*_TASK_VECTOR, "gamma", "preconditioner_path")),
    "breadcrumbs_ties": MethodTraits("required", "trim_by", (*_TASK_VECTOR, "gamma", "preconditioner_path")),
    "multislerp": MethodTraits("optional", "never", ("weight",)),
    "slerp": MethodTraits("required", "never", ()),
    "nuslerp": MethodTraits("optional", "never", ("weight",)),
    "nearswap": MethodTraits("required", "never", ()),
    "model_stock": MethodTraits("required", "never", ()),
    "karcher": MethodTraits("ignored", "never", ()),
    "passthrough": MethodTraits("ignored", "never", ("scale",)),
    "ram": MethodTraits("required", "never", ()),
    "ramplus_tl": MethodTraits("required", "never", ()),
    "arcee_fusion": MethodTraits("required", "never", ()),
    "della": MethodTraits("required", "never", (*_TASK_VECTOR, "epsilon")),
    "della_linear": MethodTraits("required", "never", (*_TASK_VECTOR, "epsilon")),
    "sce": MethodTraits("required", "never", _TASK_VECTOR),
    "ota": MethodTraits("optional", "always", ("preconditioner_path", "precond_threshold", "scaling_factor",
                                               "rank1_approx", "rank", "weight")),
}
