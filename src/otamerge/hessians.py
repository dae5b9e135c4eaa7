"""Calibration Hessians of the base model's linear layers and the OBS (SparseGPT) importance.

For a linear layer y = W x, the layer-wise reconstruction error of changing W has the
Hessian H = X^T X (X: the layer's inputs on calibration text, one row per token). The
Optimal Brain Surgeon saliency of setting entry (i, j) of the task vector back to the base
is

    s_ij = t_ij^2 / [H_damped^-1]_jj^2,   H_damped = H + damping * mean(diag H) * I

(damping relative to the mean diagonal, as SparseGPT's percdamp, so that dead inputs do not
make H singular). Hessians are collected decoder layer by decoder layer: only the
calibration set's hidden states at one layer are held, never every layer's activations.

The importance is written as a rank-1 moments file (row of ones, column 1/[H^-1]_jj^2),
so FFG, threshold extraction and merges read it as they read compressed Adam moments.
Parameters that are not inputs of a linear layer (embeddings, norms) fall back to
magnitude: a constant importance, the median of every linear column's, so that they are
ranked by |t| on the scale of a typical column under FFG's one model-wide threshold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from otamerge.atomic import atomic_file
from otamerge.checkpoint import Checkpoint
from otamerge.errors import OtaMergeError
from otamerge.moments import META_KEY, Moments

HESSIAN_META = "otamerge_hessians"
KIND = "sparsegpt"


@dataclass(frozen=True)
class Calibration:
    """Calibration set: ``samples`` windows of ``seqlen`` tokens at seeded offsets in the
    tokenized text (a .txt file, or .jsonl with a "text" field per line)."""

    path: str
    samples: int = 32
    seqlen: int = 128
    seed: int = 0


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OtaMergeError(f"calibration file {path}: cannot read ({exc})") from None
    if path.suffix != ".jsonl":
        return raw
    texts = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError):
            raise OtaMergeError(f"calibration file {path}, line {i}: not a JSON object with a \"text\" field") from None
    return "\n\n".join(texts)


def calibration_tokens(tokenizer, cal: Calibration) -> torch.Tensor:
    """(samples, seqlen) token ids."""
    text = read_text(cal.path)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if cal.samples < 1 or cal.seqlen < 1:
        raise OtaMergeError("calibration: samples and seqlen must be at least 1")
    if ids.numel() < cal.seqlen:
        raise OtaMergeError(f"calibration file {cal.path}: {ids.numel()} tokens, fewer than seqlen {cal.seqlen}")
    gen = torch.Generator().manual_seed(cal.seed)
    starts = torch.randint(0, ids.numel() - cal.seqlen + 1, (cal.samples,), generator=gen)
    return torch.stack([ids[s:s + cal.seqlen] for s in starts.tolist()])


def _decoder(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None or not hasattr(decoder, "norm") or model.get_output_embeddings() is None:
        raise OtaMergeError(f"{type(model).__name__}: calibration Hessians need a decoder with .layers and .norm "
                            "and an output embedding (Llama, Mistral, Qwen and similar)")
    return decoder, layers


class _Stop(Exception):
    pass


def _accumulate(modules: dict[str, torch.nn.Linear], hessians: dict[str, torch.Tensor]) -> list:
    """Hooks adding x^T x (fp64) of each module's input to hessians[name]."""
    def hook(name):
        def add(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            hessians[name].addmm_(x.T, x)
        return add

    for name, mod in modules.items():
        hessians[name] = torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64)
    return [mod.register_forward_pre_hook(hook(name)) for name, mod in modules.items()]


def collect_hessians(model_dir: str | Path, cal: Calibration, progress: bool = True) -> dict[str, torch.Tensor]:
    """H = X^T X (fp32, summed over every calibration token) of every nn.Linear's input,
    keyed by the linear's weight name; one decoder layer at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    model.eval()
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and cal.seqlen > limit:
        raise OtaMergeError(f"calibration seqlen {cal.seqlen} exceeds the model's {limit} positions")
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(model_dir, local_files_only=True), cal)
    decoder, layers = _decoder(model)
    names = {mod: name for name, mod in model.named_modules()}
    captured = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            for row in tokens:  # the inputs of layer 0 and its keyword arguments (positions, mask)
                try:
                    model(row[None], use_cache=False)
                except _Stop:
                    pass
        finally:
            handle.remove()
        for layer in tqdm(layers, desc="calibration Hessians", unit="layer", disable=not progress):
            linears = {f"{names[m]}.weight": m for m in layer.modules() if isinstance(m, torch.nn.Linear)}
            hessians: dict[str, torch.Tensor] = {}
            hooks = _accumulate(linears, hessians)
            try:
                for i, (args, kwargs) in enumerate(captured):
                    hidden = layer(*args, **kwargs)
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                    captured[i] = ((hidden, *args[1:]), kwargs)
            finally:
                for h in hooks:
                    h.remove()
            out.update({k: v.float() for k, v in hessians.items()})
        head = model.get_output_embeddings()
        hessians = {}
        hooks = _accumulate({f"{names[head]}.weight": head}, hessians)
        try:
            for args, _ in captured:
                head(decoder.norm(args[0]))
        finally:
            for h in hooks:
                h.remove()
        out.update({k: v.float() for k, v in hessians.items()})
    return out


def cache_key(model_dir: str | Path, cal: Calibration) -> dict:
    """What the Hessians depend on: the base's weights and the calibration set."""
    ckpt = Checkpoint(model_dir, f"base model {model_dir}")
    try:
        weights = hashlib.sha256()
        for f in sorted({ckpt.file_of(n) for n in ckpt.names()}):
            weights.update(_sha256(f).encode())
    finally:
        ckpt.close()
    return {**asdict(cal), "path": str(cal.path), "calibration_sha256": _sha256(Path(cal.path)),
            "weights_sha256": weights.hexdigest()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_key(a: dict, b: dict) -> bool:
    ignore = {"path"}  # the same bytes under another name are the same calibration set
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def hessians_cached(model_dir: str | Path, cal: Calibration, cache: str | Path,
                    progress: bool = True) -> tuple[dict[str, torch.Tensor], bool]:
    """The Hessians from ``cache`` when it was made from the same base and calibration set,
    else collected and written there; returns (hessians, read_from_cache)."""
    cache = Path(cache)
    key = cache_key(model_dir, cal)
    if cache.is_file():
        try:
            with safe_open(str(cache), "pt") as f:
                meta = json.loads((f.metadata() or {}).get(HESSIAN_META, "{}"))
                if _same_key(meta, key):
                    return {k: f.get_tensor(k) for k in f.keys()}, True
        except (OSError, ValueError, RuntimeError):
            pass  # unreadable: collected again and overwritten
    hessians = collect_hessians(model_dir, cal, progress)
    write_safetensors(hessians, cache, {HESSIAN_META: json.dumps(key, sort_keys=True)})
    return hessians, False


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    with atomic_file(path, "wb") as fh:
        fh.write(save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def check_importance_kind(moments: Moments, metric: str) -> None:
    """An OBS importance file only for sparsegpt, and Adam moments only for fisher."""
    if metric != "magnitude" and (moments.kind == KIND) != (metric == KIND):
        raise OtaMergeError(f"{moments.path}: a {moments.kind} importance file given for the {metric} metric")


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


def obs_importance(hessians: dict[str, torch.Tensor], weights: Checkpoint, damping: float = 0.01,
                   progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Rank-1 importance tensors per float weight of ``weights`` (the base), and the
    metadata naming the tensors that fell back to magnitude."""
    names = [n for n in weights.names() if weights.dtype(n).is_floating_point]
    cols = {}
    for name in tqdm([n for n in names if n in hessians], desc="OBS importance", unit="tensor", disable=not progress):
        shape = weights.shape(name)
        if len(shape) != 2 or hessians[name].shape != (shape[1], shape[1]):
            raise OtaMergeError(f"Hessian of {name} has shape {list(hessians[name].shape)}, "
                                f"the weight {list(shape)}")
        cols[name] = inverse_diagonal(hessians[name], damping).pow(-2).float()
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
    with safe_open(str(hessians_path), "pt") as f:
        source = json.loads((f.metadata() or {}).get(HESSIAN_META, "{}"))
        hessians = {k: f.get_tensor(k) for k in f.keys()}
    base = Checkpoint(base_dir, f"base model {base_dir}")
    try:
        tensors, info = obs_importance(hessians, base, damping, progress)
    finally:
        base.close()
    meta = {"kind": KIND, "rank": 1, "source": str(hessians_path), "source_metadata": {**info, "calibration": source}}
    write_safetensors(tensors, Path(out), {META_KEY: json.dumps(meta, sort_keys=True)})
    return meta
