"""The engine's side of a config's slices (otamerge.slices): which input tensors each output
tensor reads, checked from the headers, and one output tensor merged from its slice's sources."""

from __future__ import annotations

import torch

from otamerge.config import MergeConfig, slice_params
from otamerge.errors import OtaMergeError
from otamerge.io.checkpoint import Checkpoint
from otamerge.io.writer import TensorPlan
from otamerge.methods.base import Implementation, TensorInputs, compute_dtype
from otamerge.slices import SlicedTensor, plan_slices


def plan_sliced(cfg: MergeConfig, base: Checkpoint | None, models: list[Checkpoint]
                ) -> tuple[Checkpoint, dict[str, SlicedTensor], list[TensorPlan], dict[str, Checkpoint]]:
    """(the first source, output name -> its inputs, the output tensors, ref -> checkpoint)."""
    by_ref = {**({cfg.base: base} if base is not None else {}), **dict(zip((m.ref for m in cfg.models), models))}
    first = by_ref[cfg.slices[0].sources[0].ref]
    sliced = {st.name: st for st in plan_slices(cfg.slices, first.names())}
    out = []
    for st in sliced.values():
        (ckpt0, name0), *rest = [(by_ref[src.ref], name) for src, name in zip(st.slice.sources, st.inputs)]
        for ckpt, name in [(ckpt0, name0), *rest]:
            if name not in ckpt or ckpt.shape(name) != ckpt0.shape(name0):
                raise OtaMergeError(f"slices: {ckpt.label} has no tensor {name} of the shape of "
                                    f"{ckpt0.label}'s (a layer_range beyond its layers?)")
        dt = ckpt0.dtype(name0)
        out.append(TensorPlan(st.name, ckpt0.shape(name0), (cfg.out_dtype or cfg.dtype or dt) if dt.is_floating_point
                              else dt))
    return first, sliced, out, by_ref


def merge_sliced(cfg: MergeConfig, st: SlicedTensor, by_ref: dict[str, Checkpoint], method: Implementation,
                 tp: TensorPlan, device: torch.device, seed: int) -> torch.Tensor:
    """One output tensor of a config's slices, from its slice's sources at their own layer."""
    found = [(src.ref, by_ref[src.ref], name) for src, name in zip(st.slice.sources, st.inputs)]
    if not found[0][1].dtype(found[0][2]).is_floating_point:  # integer buffers: the first source's
        return found[0][1].get(found[0][2])
    base = next(((c, n) for r, c, n in found if r == cfg.base), None) if cfg.base else None
    if cfg.base and base is None:
        raise OtaMergeError(f"slices: the slice of {tp.name} does not hold the base model {cfg.base}")
    others = [(r, c, n) for r, c, n in found if r != cfg.base]
    dtype = None if method.stored_inputs else compute_dtype([c.dtype(n) for _, c, n in found])

    def load(ckpt: Checkpoint, name: str) -> torch.Tensor:
        return ckpt.get(name).to(device=device, dtype=dtype)

    params, model_params = slice_params(cfg, st.slice, [r for r, _, _ in others], tp.name, st.t)
    inputs = TensorInputs(name=tp.name, base=load(*base) if base else None, models=[load(c, n) for _, c, n in others],
                          moments=[None] * len(others), model_params=model_params, params=params, seed=seed,
                          owned=True, out_dtype=tp.dtype)
    return method.merge(inputs).to(tp.dtype)
