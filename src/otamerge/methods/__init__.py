"""The registry of merge methods: adding one touches its module and this list."""

from __future__ import annotations

from otamerge.errors import OtaMergeError
from otamerge.methods import (arcee_fusion, karcher, linear, model_stock, multislerp, nearswap, nuslerp, ota, passthrough, ram,
                              sce, slerp, task_arithmetic)
from otamerge.methods.base import MergeMethod

METHODS: dict[str, MergeMethod] = {
    m.name: m for module in (linear, task_arithmetic, multislerp, slerp, nuslerp, nearswap, model_stock, karcher,
                                       passthrough, ram, arcee_fusion, sce, ota) for m in module.METHODS
}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise OtaMergeError(f"unknown merge_method {name!r}; known: {', '.join(sorted(METHODS))}") from None
