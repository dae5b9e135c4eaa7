"""OTA merging with Fast Fisher Grafting masks (the paper's method).

Per tensor, for experts i with task vectors t_i = w_i - w_0 and second moments v_i
(optionally replaced by a rank-1 or rank-r approximation):

    mask      m_i = v_i * t_i^2 >= precond_threshold_i     (all ones without a threshold;
                                                            v_i >= threshold without a base)
    weight    a_i = m_i * (scaling_factor_i * v_i^power [/ mean, if normalise: global] + epsilon)
    merged    w_0 + sum_i a_i t_i / sum_i a_i              (masked_task_vector_merge_method: precond)
              w_0 + mean_i m_i t_i                         (linear)
              w_0 + mean_i of the TIES-trimmed, sign-agreeing m_i t_i   (ties)

Where every expert is masked the result is w_0 with ``fallback_to_base`` (else the mean
of the models), in every mode. ``rescale`` restores each masked task vector to the
norm of the unmasked one (the reference's hybrid norm). Without a base model the merge
is sum_i a_i w_i / sum_i a_i (power 1: Fisher-weighted averaging).

Differences from the reference implementation, on purpose:
- the masks are applied in linear and ties modes (the reference drops them there unless
  ``rescale`` is on);
- "every expert masked" is decided from the masks themselves, not from the sum of the
  weights being below n * epsilon * 1.1 (which also catches unmasked entries whose v^p is
  tiny);
- weights are normalised before they multiply the task vectors, and an entry that
  exactly one expert keeps takes that expert's value exactly, so that OTA of a single
  expert equals the grafted expert byte for byte.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch

from otamerge.methods import ota_kernel
from otamerge.methods.base import Implementation, TensorInputs
from otamerge.methods.sparsify import top_k_mask
from otamerge.curvature.moments import rank1, rank_r

def _moment(v: torch.Tensor, mp: dict[str, Any], name: str) -> torch.Tensor:
    if mp["rank1_approx"]:
        return rank1(v)
    if mp["rank"] and not _is_embedding(name):
        return rank_r(v, int(mp["rank"]))
    return v


def _is_embedding(name: str) -> bool:
    return "embed_tokens" in name or name.startswith("lm_head") or ".lm_head." in name


def hybrid_norm(t: torch.Tensor, name: str, approximate: bool = False) -> float:
    """The reference's norm for ``rescale``: embeddings max column L2 / sqrt(d_out);
    matrices sqrt(d_in / d_out) * spectral norm; vectors RMS; NaN otherwise."""
    if t.dim() == 1:
        return float(t.pow(2).mean().sqrt())
    if t.dim() != 2:
        return math.nan
    d_out, d_in = t.shape
    if _is_embedding(name):
        return float(t.norm(dim=0).max() / math.sqrt(d_out))
    if approximate:
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        x = torch.randn(d_in, generator=gen, dtype=t.dtype).to(t.device)
        for _ in range(10):
            x = t.T @ (t @ x)
            x = x / (x.norm() + 1e-30)
        sigma = float((t @ x).norm())
    else:
        sigma = float(torch.linalg.matrix_norm(t, ord=2))
    return math.sqrt(d_in / d_out) * sigma


def _rescaled(tau: torch.Tensor, masked: torch.Tensor, name: str, p: dict[str, Any]) -> torch.Tensor:
    before = hybrid_norm(tau, name, p["approximate_norm"])
    if math.isnan(before):
        return masked
    after = hybrid_norm(masked, name, p["approximate_norm"])
    if after > before * p["rescale_relative_threshold"]:
        return masked * (before / after)
    return torch.zeros_like(masked)


def _ties(taus: list[torch.Tensor], density: float | None) -> torch.Tensor:
    if density is not None and density < 1:
        k = int(density * taus[0].numel())
        taus = [t * top_k_mask(t.abs(), k).reshape(t.shape) for t in taus]
    stacked = torch.stack(taus)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
    return (stacked * (stacked.sign() == sign)).mean(0)


def _precond_fused(inputs: TensorInputs, vs: list[torch.Tensor], thresholds: list) -> torch.Tensor:
    """The paper's mode (base, precond, no rescale) in few passes and few temporaries:
    the same operations in the same order as the general path (``_general``), so the same
    bits (tests/test_ota.py), but one expert at a time and in place (a third of the time
    on CPU). Cutting it into cache-sized blocks was measured slower (benchmarks/README.md).
    Large float32 tensors on CPU take the compiled one-pass loop of ota_kernel.py instead."""
    p, base, models = inputs.params, inputs.base, inputs.models
    eps = p["epsilon"]
    if ota_kernel.usable(base, models, vs):  # the same bits in one pass (ota_kernel.py)
        fallback = base if p["fallback_to_base"] or all(t is None for t in thresholds) else torch.stack(models).mean(0)
        return ota_kernel.precond(base, fallback, models, vs, [v.pow(p["power"]) for v in vs], thresholds,
                                  [mp["scaling_factor"] for mp in inputs.model_params], eps)
    kept = torch.zeros(base.shape, dtype=torch.uint8, device=base.device)
    only = torch.zeros_like(base)
    weights, taus, total = [], [], None
    for x, v, thr, mp in zip(models, vs, thresholds, inputs.model_params):
        t = x - base
        w = v.pow(p["power"])
        if mp["scaling_factor"] != 1:
            w.mul_(mp["scaling_factor"])
        w.add_(eps)
        if thr is not None:
            m = t.square().mul_(v) >= thr
            w.mul_(m)
        else:
            m = torch.ones_like(kept, dtype=torch.bool)
        kept.add_(m)
        torch.where(m, x, only, out=only)  # where one expert keeps an entry: its value
        total = w.clone() if total is None else total.add_(w)
        weights.append(w)
        taus.append(t)
    merged = torch.zeros_like(base)
    for w, t in zip(weights, taus):
        merged.add_(w.div_(total).mul_(t))
    merged.add_(base)
    if any(t is not None for t in thresholds):
        fallback = base if p["fallback_to_base"] else torch.stack(models).mean(0)
        torch.where(kept == 0, fallback, merged, out=merged)
    return torch.where(kept == 1, only, merged, out=merged)


def ota(inputs: TensorInputs) -> torch.Tensor:
    p = inputs.params
    thresholds = [mp["precond_threshold"] for mp in inputs.model_params]
    vs = [_moment(v, mp, inputs.name) for v, mp in zip(inputs.moments, inputs.model_params)]
    if inputs.base is not None and p["masked_task_vector_merge_method"] == "precond" and not p["rescale"] \
            and p["normalise"] == "none":
        return _precond_fused(inputs, vs, thresholds)
    return _general(inputs, vs, thresholds)


def _general(inputs: TensorInputs, vs: list[torch.Tensor], thresholds: list) -> torch.Tensor:
    p, name, base, models = inputs.params, inputs.name, inputs.base, inputs.models
    eps = p["epsilon"]
    taus = [x - base for x in models] if base is not None else None

    masks = []
    for i, (v, thr) in enumerate(zip(vs, thresholds)):
        if thr is None:
            masks.append(torch.ones_like(v, dtype=torch.bool))
        else:
            masks.append((v * taus[i].square() >= thr) if taus is not None else (v >= thr))

    weights = []
    for v, m, mp in zip(vs, masks, inputs.model_params):
        pre = v.pow(p["power"]) * mp["scaling_factor"]
        if p["normalise"] == "global":
            pre = pre / (pre.mean() + eps)
        weights.append((pre + eps) * m)
    total = torch.stack(weights).sum(0)

    if taus is None:
        merged = sum((w / total) * x for w, x in zip(weights, models))
    else:
        masked = [t * m for t, m in zip(taus, masks)]
        if p["rescale"]:
            masked = [_rescaled(t, mt, name, p) for t, mt in zip(taus, masked)]
        mode = p["masked_task_vector_merge_method"]
        if mode == "precond":
            merged = base + sum((w / total) * t for w, t in zip(weights, masked))
        elif mode == "linear":
            merged = base + torch.stack(masked).mean(0)
        else:
            merged = base + _ties(masked, p["ties_density"])

    kept = torch.stack(masks).sum(0)
    if any(t is not None for t in thresholds):
        fallback = base if (p["fallback_to_base"] and base is not None) else torch.stack(models).mean(0)
        merged = torch.where(kept == 0, fallback, merged)
    if taus is None or (p["masked_task_vector_merge_method"] == "precond" and not p["rescale"]):
        # one expert kept: its normalised weight is exactly 1, so the value is its own
        only = sum(torch.where(m, x, 0) for m, x in zip(masks, models))
        merged = torch.where(kept == 1, only, merged)
    return merged


def _whole_tensor(p: dict[str, Any], model_params: list[dict[str, Any]]) -> bool:
    return (p["normalise"] == "global" or p["rescale"] or p["masked_task_vector_merge_method"] == "ties"
            or any(mp["rank1_approx"] or mp["rank"] for mp in model_params))


IMPLEMENTS = {"ota": Implementation(ota, whole_tensor=_whole_tensor)}
