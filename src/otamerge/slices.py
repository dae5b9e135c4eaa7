"""mergekit's ``slices``: an output model built layer range by layer range.

    slices:
      - sources:                                   # one merge of these layers
          - {model: A, layer_range: [0, 16]}
          - {model: B, layer_range: [0, 16], parameters: {weight: 0.3}}
        parameters: {t: [0, 1]}                    # over this slice's layers
      - sources:                                   # then these, stacked (passthrough)
          - {model: C, layer_range: [8, 24]}

As mergekit 0.1.5 builds it: output layer j of a slice (numbered after the layers of the
slices before it) merges layer ``layer_range[0] + j`` of each of the slice's sources, the
base model's too where it is one of them; a gradient runs over the slice's layers
(t = j / (n - 1)); a source's own parameters come first, then its slice's, then the global
ones. The tensors outside the layers come from the first slice's sources (embeddings: a
name holding ``embed`` or GPT-2's ``wte``/``wpe``) or the last slice's (final norm, head),
at t = 0 with that slice's parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from otamerge.errors import OtaMergeError
from otamerge.settings import gradient_t, layer_match

_PRE = re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")


@dataclass(frozen=True)
class Source:
    ref: str
    start: int
    end: int
    settings: dict[str, Any]   # the source's own parameters, checked


@dataclass(frozen=True)
class Slice:
    sources: tuple[Source, ...]
    settings: dict[str, Any]   # the slice's parameters, checked

    @property
    def n_layers(self) -> int:
        return self.sources[0].end - self.sources[0].start


@dataclass(frozen=True)
class SlicedTensor:
    """One output tensor: its name, the slice it comes from, its layer position t, and the
    name of the input tensor in each of the slice's sources (in the sources' order)."""

    name: str
    slice: Slice
    t: float
    inputs: tuple[str, ...]


Check = Callable[[dict[str, Any], list[tuple[str, dict[str, Any]]]], tuple[dict[str, Any], list[dict[str, Any]]]]


def parse_slices(raw: Any, check: Check) -> tuple[Slice, ...]:
    """The slices of a config, every layer range and parameter checked (``check``: the
    config parser's check of global and per-model settings)."""
    if not isinstance(raw, list) or not raw:
        raise OtaMergeError("merge config: slices must be a non-empty list")
    out = []
    for i, s in enumerate(raw):
        where = f"slices[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"] \
                or set(s) - {"sources", "parameters"}:
            raise OtaMergeError(f"{where}: a slice is a mapping of sources (a non-empty list) and parameters")
        sources = []
        for src in s["sources"]:
            ok = isinstance(src, dict) and isinstance(src.get("model"), str) and not set(src) - {
                "model", "layer_range", "parameters"}
            rng = src.get("layer_range") if ok else None
            if not ok or not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng)
                              and 0 <= rng[0] < rng[1]):
                raise OtaMergeError(f"{where}: each source needs a model and a layer_range [start, end), got {src!r}")
            sources.append((src["model"], rng, src.get("parameters") or {}))
        if len({r[1] - r[0] for _, r, _ in sources}) != 1:
            raise OtaMergeError(f"{where}: every source of a slice spans as many layers")
        shared, own = check(s.get("parameters") or {}, [(ref, p) for ref, _, p in sources])
        out.append(Slice(tuple(Source(ref, r[0], r[1], o) for (ref, r, _), o in zip(sources, own)), shared))
    return tuple(out)


def _renamed(name: str, layer: int) -> str:
    m = layer_match(name)
    return name[:m.start(1)] + str(layer) + name[m.end(1):]


def plan_slices(slices: tuple[Slice, ...], names: list[str]) -> list[SlicedTensor]:
    """Every output tensor in order: the first slice's embeddings, each slice's layers, the
    last slice's other tensors. ``names``: the tensors of one source model (layer 0 gives
    the names of a layer's tensors)."""
    layer0 = [n for n in names if (m := layer_match(n)) and m.group(1) == "0"]
    outside = [n for n in names if not layer_match(n)]
    pre = [n for n in outside if _PRE.search(n)]
    out = [SlicedTensor(n, slices[0], 0.0, (n,) * len(slices[0].sources)) for n in pre]
    offset = 0
    for s in slices:
        for j in range(s.n_layers):
            t = gradient_t(j, s.n_layers)
            out += [SlicedTensor(_renamed(n, offset + j), s, t, tuple(_renamed(n, src.start + j) for src in s.sources))
                    for n in layer0]
        offset += s.n_layers
    out += [SlicedTensor(n, slices[-1], 0.0, (n,) * len(slices[-1].sources)) for n in outside if n not in pre]
    return out


def total_layers(slices: tuple[Slice, ...]) -> int:
    return sum(s.n_layers for s in slices)
