"""The engine's merge methods: one per-tensor function per name of the catalog."""

from __future__ import annotations

from otamerge.methods import (arcee_fusion, karcher, linear, model_stock, multislerp, nearswap, nuslerp, ota,
                              passthrough, ram, regmean, sce, slerp, subspace, task_arithmetic)
from otamerge.methods.base import Implementation
from otamerge.methods.catalog import method_spec

IMPLEMENTATIONS: dict[str, Implementation] = {
    name: impl for module in (linear, task_arithmetic, multislerp, slerp, nuslerp, nearswap, model_stock, karcher,
                              passthrough, ram, arcee_fusion, sce, subspace, regmean, ota)
    for name, impl in module.IMPLEMENTS.items()
}


def implementation(name: str) -> Implementation:
    """The per-tensor function of a catalogued method (an unknown name is a one-line error)."""
    return IMPLEMENTATIONS[method_spec(name).name]
