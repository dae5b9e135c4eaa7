"""Calibration Hessians of the base model's linear layers and the OBS (SparseGPT) importance.

For a linear layer y = W x, the layer-wise reconstruction error of changing W has the
Hessian H = X^T X (X: the layer's inputs on calibration text, one row per token). The
Optimal Brain Surgeon saliency of setting entry (i, j) of the task vector back to the base
(the increase of the layer's squared error, the other entries of row i compensating) is

    s_ij = t_ij^2 / [H_damped^-1]_jj,   H_damped = H + damping * mean(diag H) * I

This is SparseGPT's selection criterion: its code divides W^2 by the SQUARED diagonal of
the Cholesky factor U of H^-1 (H^-1 = U^T U), and U_jj^2 = [H_F^-1]_jj, the inverse
diagonal over the columns F it has not yet processed: for the first column exactly
[H^-1]_jj (tested). Squaring [H^-1]_jj itself would weigh an input's activation scale
to the fourth power instead of the second: not a loss, and measurably worse grafts on
the demo (see the issue notes).

(damping relative to the mean diagonal, as SparseGPT's percdamp, so that dead inputs do not
make H singular). Hessians are collected decoder layer by decoder layer: only the
calibration set's hidden states at one layer and that layer's Hessians are held, never
every layer's activations; they are written as they are done, into a sharded
safetensors folder keyed by the linear's weight name (the cache).

The importance is written as a rank-1 moments file (row of ones, column 1/[H^-1]_jj),
so FFG, threshold extraction and merges read it as they read compressed Adam moments.
Parameters that are not inputs of a linear layer (embeddings, norms) fall back to
magnitude: a constant importance, the median of every linear column's, so that they are
ranked by |t| on the scale of a typical column under FFG's one model-wide threshold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from otamerge.io.atomic import atomic_dir, check_space, write_safetensors
from otamerge.curvature.calibration import Calibration, calibration_tokens
from otamerge.io.checkpoint import Checkpoint
from otamerge.io.digest import file_sha256
from otamerge.device import pick_device
from otamerge.errors import OtaMergeError
from otamerge.curvature.moments import META_KEY, OBS_KIND
from otamerge.io.writer import ShardedWriter, TensorPlan

HESSIAN_META = "otamerge_hessians"
SHARD_BYTES = 5 << 30


def _decoder(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None or not hasattr(decoder, "norm") or model.get_output_embeddings() is None:
        raise OtaMergeError(f"{type(model).__name__}: calibration Hessians need a decoder with .layers and .norm "
                            "and an output embedding (Llama, Mistral, Qwen and similar)")
    return decoder, layers


class _Stop(Exception):
    """Raised by the hook on layer 0 once it has its inputs: the rest need not run."""


def _accumulate(modules: dict[str, torch.nn.Linear], hessians: dict[str, torch.Tensor]) -> list:
    """Hooks adding x^T x (fp64) of each module's input to hessians[name]."""
    def hook(name):
        def add(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            hessians[name].addmm_(x.T, x)
        return add

    for name, mod in modules.items():
        hessians[name] = torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64,
                                     device=mod.weight.device)
    return [mod.register_forward_pre_hook(hook(name)) for name, mod in modules.items()]


def _run_hooked(modules: dict[str, torch.nn.Linear], forward) -> dict[str, torch.Tensor]:
    hessians: dict[str, torch.Tensor] = {}
    hooks = _accumulate(modules, hessians)
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    return hessians


def _groups(model) -> list[dict[str, torch.nn.Linear]]:
    """The linear layers by weight name, one group per decoder layer, then the output head."""
    _, layers = _decoder(model)
    names = {mod: name for name, mod in model.named_modules()}
    groups = [{f"{names[m]}.weight": m for m in layer.modules() if isinstance(m, torch.nn.Linear)}
              for layer in layers]
    head = model.get_output_embeddings()
    return groups + [{f"{names[head]}.weight": head}]


def _stream(model, tokens: torch.Tensor, progress: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(weight name, H) of every linear layer, decoder layer by decoder layer."""
    decoder, layers = _decoder(model)
    groups = _groups(model)
    captured = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for row in tokens:  # the inputs of layer 0 and its keyword arguments (positions, mask)
            try:
                model(row[None], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    for layer, group in zip(tqdm(layers, desc="calibration Hessians", unit="layer", disable=not progress), groups):
        def forward():
            for i, (args, kwargs) in enumerate(captured):
                hidden = layer(*args, **kwargs)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                captured[i] = ((hidden, *args[1:]), kwargs)
        yield from _run_hooked(group, forward).items()
    (head,) = groups[-1].values()

    def forward_head():  # the output head's input: the final norm of the last hidden states
        for args, _ in captured:
            head(decoder.norm(args[0]))
    yield from _run_hooked(groups[-1], forward_head).items()


def collect_hessians(model_dir: str | Path, cal: Calibration, out_dir: str | Path, key: dict | None = None,
                     progress: bool = True, device: str = "auto") -> None:
    """Write H = X^T X (fp32, summed over every calibration token) of every nn.Linear's
    input into the folder ``out_dir``, keyed by the linear's weight name. One decoder layer's
    Hessians (fp64) are held at a time; the writer streams them out in its planned order."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    dev = pick_device(device)
    model.eval().to(dev)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and cal.seqlen > limit:
        raise OtaMergeError(f"calibration seqlen {cal.seqlen} exceeds the model's {limit} positions")
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(model_dir, local_files_only=True), cal).to(dev)
    plans = [TensorPlan(name, (m.in_features, m.in_features), torch.float32)
             for group in _groups(model) for name, m in group.items()]
    check_space(sum(p.nbytes for p in plans), Path(out_dir).parent, f"calibration Hessians into {out_dir}")
    meta = {HESSIAN_META: json.dumps(key if key is not None else cache_key(model_dir, cal), sort_keys=True)}
    with torch.no_grad(), atomic_dir(out_dir) as tmp:
        writer = ShardedWriter(tmp, plans, SHARD_BYTES, meta)
        for name, h in _stream(model, tokens, progress):
            writer.write(name, h.float())
        writer.close()


def cache_key(model_dir: str | Path, cal: Calibration) -> dict:
    """What the Hessians depend on: the base's weights and the calibration set."""
    ckpt = Checkpoint(model_dir, f"base model {model_dir}")
    try:
        weights = hashlib.sha256()
        for f in sorted({ckpt.file_of(n) for n in ckpt.names()}):
            weights.update(file_sha256(f).encode())
    finally:
        ckpt.close()
    return {**asdict(cal), "path": str(cal.path), "calibration_sha256": file_sha256(cal.path),
            "weights_sha256": weights.hexdigest()}


def _same_key(a: dict, b: dict) -> bool:
    ignore = {"path"}  # the same bytes under another name are the same calibration set
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def _open_cache(cache: Path, key: dict) -> Checkpoint | None:
    """The cache folder when it holds Hessians made with ``key``; None when it is absent,
    unreadable, partial or made from other inputs (then it is collected again)."""
    if not cache.is_dir():
        return None
    try:
        ckpt = Checkpoint(cache, f"Hessian cache {cache}")
    except OtaMergeError:
        return None
    try:
        if _same_key(json.loads(ckpt.file_metadata().get(HESSIAN_META, "null")) or {}, key):
            return ckpt
    except ValueError:
        pass
    ckpt.close()
    return None


def hessians_cached(model_dir: str | Path, cal: Calibration, cache: str | Path,
                    progress: bool = True, device: str = "auto") -> tuple[Checkpoint, bool]:
    """The Hessians (read lazily) from the folder ``cache`` when it was made from the same
    base and calibration set, else collected into it; returns (hessians, read_from_cache)."""
    cache = Path(cache)
    key = cache_key(model_dir, cal)
    cached = _open_cache(cache, key)
    if cached is not None:
        return cached, True
    collect_hessians(model_dir, cal, cache, key, progress, device)
    return Checkpoint(cache, f"Hessian cache {cache}"), False


def inverse_diagonal(h: torch.Tensor, damping: float) -> torch.Tensor:
    """diag((H + damping * mean(diag H) * I)^-1), in fp64 through a Cholesky factor."""
    h = h.double()
    mean = float(h.diagonal().mean())
    damp = damping * mean if mean > 0 else damping
    if damp <= 0:
        raise OtaMergeError("sparsegpt damping must be > 0 (H is singular wherever an input is never active)")
    hd = h + damp * torch.eye(h.shape[0], dtype=h.dtype)
    factor, info = torch.linalg.cholesky_ex(hd)
    if int(info) != 0:
        raise OtaMergeError(f"calibration Hessian is not positive definite with damping {damping}; raise it")
    return torch.cholesky_inverse(factor).diagonal().clone()


def obs_importance(hessians: Checkpoint, weights: Checkpoint, damping: float = 0.01,
                   progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Rank-1 importance tensors per float weight of ``weights`` (the base), and the
    metadata naming the tensors that fell back to magnitude."""
    names = [n for n in weights.names() if weights.dtype(n).is_floating_point]
    cols = {}
    for name in tqdm([n for n in names if n in hessians], desc="OBS importance", unit="tensor", disable=not progress):
        shape = weights.shape(name)
        if len(shape) != 2 or hessians.shape(name) != (shape[1], shape[1]):
            raise OtaMergeError(f"Hessian of {name} has shape {list(hessians.shape(name))}, "
                                f"the weight {list(shape)}")
        cols[name] = inverse_diagonal(hessians.get(name), damping).reciprocal().float()
    if not cols:
        raise OtaMergeError("no Hessian matches a weight of the base model")
    scale = float(torch.cat(list(cols.values())).median())
    out: dict[str, torch.Tensor] = {}
    fallback = []
    for name in names:
        shape = weights.shape(name)
        col = cols.get(name)
        if col is None:
            fallback.append(name)
        if len(shape) == 2:
            out[f"{name}.rank1.row"] = torch.ones(shape[0])
            out[f"{name}.rank1.col"] = col if col is not None else torch.full((shape[1],), scale)
            out[f"{name}.rank1.total"] = torch.tensor(1.0)
        else:
            out[name] = torch.full(tuple(shape), scale)
    info = {"damping": damping, "fallback_magnitude": fallback, "fallback_scale": scale,
            "linear_tensors": len(cols)}
    return out, info


def write_importance(hessians_path: str | Path, base_dir: str | Path, out: str | Path,
                     damping: float = 0.01, progress: bool = True) -> dict:
    """The OBS importance of ``base_dir``'s weights from cached Hessians, as a rank-1
    moments file of kind "sparsegpt"; returns its metadata."""
    hessians_path = Path(hessians_path)
    hessians = Checkpoint(hessians_path, f"Hessian cache {hessians_path}")
    base = Checkpoint(base_dir, f"base model {base_dir}")
    try:
        source = json.loads(hessians.file_metadata().get(HESSIAN_META, "{}"))
        tensors, info = obs_importance(hessians, base, damping, progress)
    finally:
        base.close()
        hessians.close()
    meta = {"kind": OBS_KIND, "rank": 1, "source": str(hessians_path), "source_metadata": {**info, "calibration": source}}
    write_safetensors(out, tensors, {META_KEY: json.dumps(meta, sort_keys=True)})
    return meta
