"""Where in a Llama-shaped model a tensor sits: its role (q, k, ..., embed) and its layer,
from its name. Imports nothing heavy: the plots, the claims and the benchmarks read it."""

from __future__ import annotations

import re

ROLES = ["q", "k", "v", "o", "gate", "up", "down", "norms", "embed", "lm_head"]
_ROLE = [(r"\.q_proj\.", "q"), (r"\.k_proj\.", "k"), (r"\.v_proj\.", "v"), (r"\.o_proj\.", "o"),
         (r"\.gate_proj\.", "gate"), (r"\.up_proj\.", "up"), (r"\.down_proj\.", "down"),
         (r"norm", "norms"), (r"embed_tokens", "embed"), (r"lm_head", "lm_head")]


def role_of(name: str) -> str | None:
    return next((role for pat, role in _ROLE if re.search(pat, name)), None)


def layer_of(name: str) -> str:
    """``model.layers.<i>.`` -> ``<i>``; embeddings, lm_head and the final norm -> ``other``."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    return m[1] if m else "other"
