"""A parameter's setting in a mergekit config, resolved per tensor as mergekit 0.1.5 does.

    weight: 0.5                                   # a value
    t: [0, 0.5, 1]                                # a gradient over the layers
    t:                                            # filters: the first whose filter is in the
      - {filter: self_attn, value: [0, 1]}        # tensor's name (none, or "*": every tensor)
      - {filter: mlp, value: 0.3}
      - {value: 0.5}

A gradient's value for a tensor of layer i of n is taken at t = i / (n - 1) (t = 1 for a
single layer; t = 0 for the tensors outside the layers: embeddings, final norm, head):
numbers are interpolated between the two neighbouring endpoints, booleans and strings take
the endpoint at int(t (len - 1)). Where no filter matches, the setting is not given for that
tensor: the next scope (the global parameters), then the default, applies.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from otamerge.errors import OtaMergeError

Coerce = Callable[[Any], Any]
# the layer of a tensor, as mergekit's architectures number them (Llama model.layers.N., GPT-2 h.N.)
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def varies(setting: Any) -> bool:
    """Whether a checked setting is a gradient or filters (not one value for every tensor)."""
    return isinstance(setting, list)


def check_setting(setting: Any, coerce: Coerce, where: str) -> Any:
    """The setting with every endpoint coerced: a value, a list of values (a gradient) or a
    list of (filter, setting) pairs; a malformed one is an error naming ``where``."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return coerce(setting)
    if not setting:
        raise OtaMergeError(f"{where}: an empty list is neither a gradient nor filters")
    if all(not isinstance(e, (dict, list)) for e in setting):
        return [coerce(e) for e in setting]
    out = []
    for cond in setting:
        if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
            raise OtaMergeError(f"{where}: a filter list holds mappings of filter and value, got {cond!r}")
        out.append((None if cond.get("filter") is None else str(cond["filter"]),
                    check_setting(cond["value"], coerce, where)))
    return out


def evaluate(setting: Any, tensor: str, t: float, coerce: Coerce) -> Any:
    """The value of a checked setting for ``tensor`` at layer position ``t`` (None: not given)."""
    if not varies(setting):
        return setting
    if isinstance(setting[0], tuple):
        for flt, value in setting:
            if flt is None or flt == "*" or flt in tensor:
                return evaluate(value, tensor, t, coerce)
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        return setting[int(t * (len(setting) - 1))]
    scaled = t * (len(setting) - 1)
    low = int(scaled)
    high, frac = min(len(setting) - 1, low + 1), scaled - low
    return coerce((1 - frac) * setting[low] + frac * setting[high])


def layer_match(tensor: str) -> re.Match | None:
    """The match of a layer tensor's index (group 1), None outside the layers."""
    return _LAYER.search(tensor)


def gradient_t(index: int, n_layers: int) -> float:
    """mergekit's position of layer ``index`` of ``n_layers``: i / (n - 1), 1 for a single layer."""
    return index / (n_layers - 1) if n_layers > 1 else 1.0


def layer_position(tensor: str, n_layers: int) -> float:
    """t of a tensor: gradient_t of its layer, 0 outside the layers."""
    m = layer_match(tensor)
    return 0.0 if m is None else gradient_t(int(m.group(1)), n_layers)


def count_layers(names: list[str]) -> int:
    """The number of layers of a model by its tensor names."""
    found = [int(m.group(1)) for m in map(layer_match, names) if m]
    return max(found) + 1 if found else 0
