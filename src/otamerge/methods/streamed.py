"""The task-arithmetic family slice by slice, from whole tensors in their stored dtype.

A TIES merge of a bf16 embedding held every input in fp32 plus |delta|, a running sum,
masks and a divisor of the tensor's size. Here only the inputs are whole (as stored);
task vectors are made again in fp32 for each pass over SLICE entries: per model, a
radix select of the trimming threshold (two passes); then one pass that sparsifies,
elects the sign, mixes and adds the base. Every step but the threshold is elementwise
and the threshold is exact, so the bits are those of the whole-tensor path. DARE's
rescale needs the L1 norm of the whole task vector with torch's own reduction order, so
that sum alone is taken over a whole fp32 buffer, one model at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from otamerge.methods import selection, sparsify
from otamerge.methods.base import TensorInputs
from otamerge.methods.consensus import combine

# Entries a slice: its temporaries (task vectors, scores, the radix select's int64 bits:
# some 40 bytes an entry) stay a few MB, which the allocator also keeps from fragmenting
# into tens of MB; smaller slices cost time in per-slice overheads.
SLICE = 1 << 18

Masker = Callable[[slice, torch.Tensor], torch.Tensor]  # (slice, its task vector) -> kept entries


class Unsliceable(Exception):
    """A NaN or negative score: the whole-tensor path ranks it (torch.kthvalue's order)."""


@dataclass(frozen=True)
class Source:
    """The inputs flattened, and each slice's task vector in the compute dtype."""

    base: torch.Tensor
    models: list[torch.Tensor]
    moments: list[torch.Tensor | None]
    compute: torch.dtype
    trim_by: str

    @property
    def slices(self) -> list[slice]:
        n = self.base.numel()
        return [slice(a, min(a + SLICE, n)) for a in range(0, n, SLICE)]

    def delta(self, i: int, s: slice) -> torch.Tensor:
        return self.models[i][s].to(self.compute) - self.base[s].to(self.compute)

    def scores(self, i: int, s: slice, delta: torch.Tensor) -> torch.Tensor:
        v = self.moments[i]
        imp = sparsify.importance(self.trim_by, delta, None if v is None else v[s].to(self.compute))
        return delta.abs() if imp is None else imp

    def score_chunks(self, i: int):
        """A fresh pass over model i's scores; a NaN or negative one stops it (Unsliceable)."""
        def chunks():
            for s in self.slices:
                part = self.scores(i, s, self.delta(i, s))
                if not bool(part.min() >= 0):  # (NaN too: the radix select ranks non-negative floats)
                    raise Unsliceable
                yield part
        return chunks


@dataclass(frozen=True)
class Sparsity:
    start: Callable[[], Masker]  # a fresh masker, called on the slices in order
    rescale: bool                # mergekit's L1 rescale after the drop


def _ranked(src: Source, i: int, wanted: list[tuple[int, bool]], window: bool, rescale: bool) -> Sparsity:
    cut = selection.cuts(src.score_chunks(i), src.base.numel(), wanted)

    def start() -> Masker:
        masks = [c.start() for c in cut]

        def mask(s: slice, delta: torch.Tensor) -> torch.Tensor:
            scores = src.scores(i, s, delta)
            return masks[0](scores) & ~masks[1](scores) if window else masks[0](scores)
        return mask
    return Sparsity(start, rescale)


def _random(src: Source, inputs: TensorInputs, i: int, density: float, rescale: bool) -> Sparsity:
    def start() -> Masker:
        gen = sparsify.model_generator(inputs.seed, inputs.name, i)  # drawn in order: the whole shape's mask
        return lambda s, delta: sparsify.bernoulli(s.stop - s.start, density, gen).to(src.base.device)
    if not rescale:
        return Sparsity(start, False)
    # the rescale's sums and the merge see the same mask: drawn once and kept in one block
    # (slice-sized masks kept among freed temporaries fragmented the heap by ~300 MB)
    draw = start()
    kept = torch.empty(src.base.numel(), dtype=torch.bool, device=src.base.device)
    for s in src.slices:
        kept[s] = draw(s, None)
    return Sparsity(lambda: lambda s, delta: kept[s], True)


def _della(src: Source, inputs: TensorInputs, i: int, density: float, epsilon: float, rescale: bool) -> Sparsity:
    """DELLA's mask, drawn once for the whole tensor from its rows' magnitudes (row blocks)."""
    shape = inputs.base.shape
    n = shape[-1] if len(shape) else 1

    def abs_rows(a: int, b: int) -> torch.Tensor:
        return src.delta(i, slice(a * n, b * n)).abs_()

    gen = sparsify.model_generator(inputs.seed, inputs.name, i)
    kept = sparsify.della_mask(abs_rows, shape, density, epsilon, gen).to(src.base.device)
    return Sparsity(lambda: lambda s, delta: kept[s], rescale)


def sparsity(kind: str | None, src: Source, inputs: TensorInputs, i: int) -> Sparsity | None:
    """What model i keeps of its task vector (None: all of it), as sparsify's rules say."""
    p, n = inputs.model_params[i], src.base.numel()
    rescale = bool(inputs.params["rescale"])
    if kind is None or p["density"] >= 1:
        return None
    if kind == "magnitude":
        return _ranked(src, i, [(sparsify.top_count(p["density"], n), True)], False, rescale)
    if kind == "random":
        return _random(src, inputs, i, p["density"], rescale)
    if kind == "della":
        if p["density"] <= 0:  # (della() zeroes the task vector)
            return Sparsity(lambda: lambda s, delta: torch.zeros_like(delta, dtype=torch.bool), False)
        return _della(src, inputs, i, p["density"], p["epsilon"], rescale)
    fork = inputs.params.get("breadcrumbs_compat", "mergekit") == "fork"
    window = sparsify.breadcrumbs_window(p["density"], p["gamma"], n, fork)
    if window is None:  # (a zero mask, no rescale: what breadcrumbs() does)
        return Sparsity(lambda: lambda s, delta: torch.zeros_like(delta, dtype=torch.bool), False)
    return _ranked(src, i, [(window[0], False), (window[1], False)], True, rescale)


def l1_scale(src: Source, i: int, sp: Sparsity, shape: torch.Size) -> torch.Tensor | None:
    """sparsify.rescale_l1_'s factor (None: no scaling), its sums over a whole buffer."""
    buf = torch.empty(shape, dtype=src.compute, device=src.base.device)
    flat = buf.view(-1)
    for s in src.slices:
        torch.abs(src.delta(i, s), out=flat[s])
    before = buf.sum()
    mask = sp.start()
    for s in src.slices:
        d = src.delta(i, s)
        torch.abs(d.mul_(mask(s, d)), out=flat[s])
    return sparsify.l1_factor(before, buf.sum())


def _kept(src: Source, i: int, s: slice, mask: Masker | None, scale: torch.Tensor | None) -> torch.Tensor:
    """Model i's sparsified task vector on slice s (sparsify._apply's steps, in order)."""
    d = src.delta(i, s)
    if mask is not None:
        d.mul_(mask(s, d))
    return d if scale is None else d.mul_(scale)


def _output(inputs: TensorInputs, compute: torch.dtype) -> torch.Tensor:
    """Where the merge goes: over the base itself when the engine lent it and it has the
    output's dtype (each slice of the base is read before the merge's slice is written)."""
    dtype = inputs.out_dtype or compute
    base = inputs.base
    if inputs.owned and base.dtype == dtype and base.is_contiguous():
        return base
    return torch.empty(base.shape, dtype=dtype, device=base.device)


def merge(inputs: TensorInputs, kind: str | None, consensus: bool, compute: torch.dtype) -> torch.Tensor:
    """The family's merge of one tensor (in inputs.out_dtype, else ``compute``); raises
    Unsliceable, before writing anything, where the whole-tensor path must do it."""
    src = Source(inputs.base.reshape(-1), [x.reshape(-1) for x in inputs.models],
                 [None if v is None else v.reshape(-1) for v in inputs.moments], compute,
                 inputs.params.get("trim_by", "magnitude"))
    sps = [sparsity(kind, src, inputs, i) for i in range(len(src.models))]
    scales = [l1_scale(src, i, sp, inputs.base.shape) if sp and sp.rescale else None for i, sp in enumerate(sps)]
    weights = [float(torch.tensor(p["weight"], dtype=compute)) for p in inputs.model_params]
    masks = [sp and sp.start() for sp in sps]
    out = _output(inputs, compute)
    flat = out.view(-1)
    for s in src.slices:
        deltas = [_kept(src, i, s, masks[i], scales[i]).mul_(w) for i, w in enumerate(weights)]
        flat[s].copy_(combine(deltas, weights, src.base[s].to(compute), inputs.params, consensus))
    return out
