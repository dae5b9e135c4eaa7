"""Merge configurations in mergekit's YAML format, parsed and checked before any work.

    merge_method: ota
    base_model: path-or-repo
    models:
      - model: path-or-repo
        parameters: {weight: 1.0, preconditioner_path: ..., precond_threshold: 1e-19}
    parameters: {...}           # global; a model's own value overrides it; any value may be
                                # a gradient or filters, as in mergekit (otamerge.settings)
    slices: [...]               # instead of models: layer ranges (otamerge.slices)
    dtype: bfloat16             # output dtype unless out_dtype is given
    out_dtype: bfloat16
    tokenizer_source: base      # base | union | a model

Arithmetic is always fp32 (fp64 for fp64 inputs) and rounded once to the output dtype;
``dtype`` does not round the inputs first (mergekit computes in ``dtype``; see README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from otamerge.errors import OtaMergeError
from otamerge.methods.catalog import REQUIRED, MethodSpec, Param, method_spec
from otamerge.settings import check_setting, evaluate, varies
from otamerge.slices import Slice, parse_slices

if TYPE_CHECKING:
    import torch

# names of torch dtypes: torch loads only for a config that names one, so jobs that only
# read configs (a model card: 24 jobs in the demo) skip its 1-2 s import
DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float64": "float64", "fp64": "float64",
}
TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "name"}


@dataclass(frozen=True)
class ModelSpec:
    ref: str
    params: dict[str, Any] = field(default_factory=dict)     # resolved (for a varying setting: at no tensor)
    settings: dict[str, Any] = field(default_factory=dict)   # as given, checked: per tensor via tensor_params


@dataclass(frozen=True)
class MergeConfig:
    method: MethodSpec
    base: str | None
    models: list[ModelSpec]          # the models the method combines (never the base)
    params: dict[str, Any]           # resolved global parameters
    dtype: torch.dtype | None
    out_dtype: torch.dtype | None
    tokenizer_source: str | None
    raw: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)   # the global parameters as given, checked
    slices: tuple[Slice, ...] = ()   # mergekit's slices (otamerge.slices); models then lists their sources

    @property
    def varies(self) -> bool:
        """Whether parameters may differ by tensor (gradients, filters, slices)."""
        return bool(self.slices) or any(
            varies(v) for scope in [self.settings, *(m.settings for m in self.models)] for v in scope.values())


def _dtype(value: Any, key: str) -> torch.dtype | None:
    if value is None:
        return None
    if str(value) not in DTYPES:
        raise OtaMergeError(f"{key}: unknown dtype {value!r}; use one of float32, bfloat16, float16, float64")
    import torch
    return getattr(torch, DTYPES[str(value)])


def _coerce(param: Param, value: Any, where: str) -> Any:
    if value is None:
        return None
    try:
        if param.kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        # PyYAML reads 1e-26 (no dot) as a string: accept it as the number it means
        out = param.kind(value)
    except (TypeError, ValueError):
        raise OtaMergeError(f"{where}: parameter {param.name}={value!r} is not a {param.kind.__name__}") from None
    if param.choices and out not in param.choices:
        raise OtaMergeError(f"{where}: {param.name}={out!r} is not one of {', '.join(map(str, param.choices))}")
    if param.name in ("density", "ties_density") and not 0 < out <= 1:
        raise OtaMergeError(f"{where}: {param.name}={out} is outside (0, 1]")
    return out


def _given(value: Any, otherwise: Any) -> Any:
    """A value left empty in YAML (``epsilon:`` or ``null``) means "not set"."""
    return otherwise if value is None else value


def check_settings(method: MethodSpec, global_raw: dict[str, Any], models_raw: list[tuple[str, dict[str, Any]]]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every given setting checked (known name, per-model where set per model, each value or
    gradient endpoint of the right kind); global and each model's."""
    known = {p.name: p for p in method.params}
    for key in global_raw:
        if key not in known:
            raise OtaMergeError(f"parameters: unknown parameter {key!r} for merge_method "
                                f"{method.name} (known: {', '.join(known)})")
    for ref, raw in models_raw:
        for key in raw:
            if key not in known:
                raise OtaMergeError(f"model {ref}: unknown parameter {key!r} for merge_method {method.name}")
            if not known[key].per_model:
                raise OtaMergeError(f"model {ref}: parameter {key!r} is global; set it under parameters")

    def checked(raw: dict[str, Any], where: str) -> dict[str, Any]:
        return {k: check_setting(v, lambda x, p=known[k]: _coerce(p, x, where), where) for k, v in raw.items()}
    return checked(global_raw, "parameters"), [checked(raw, f"model {ref}") for ref, raw in models_raw]


def resolve_params(method: MethodSpec, shared: list[dict[str, Any]],
                   models: list[tuple[str, list[dict[str, Any]]]], tensor: str | None = None,
                   t: float = 0.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Global values and each model's values for ``tensor`` at layer position ``t``: the
    first scope that gives one (a model's own scopes, then the ``shared`` ones: a slice's,
    the global parameters), else the default; a missing required value refused. Without a
    tensor: the values no filter decides (a required one given only by filters is None)."""
    def value(p: Param, scopes: list[dict[str, Any]], where: str) -> Any:
        coerce = lambda x: _coerce(p, x, where)  # noqa: E731
        out = p.default
        for scope in reversed(scopes):  # the first scope given wins
            out = _given(evaluate(scope.get(p.name), tensor or "", t, coerce), out)
        if out is REQUIRED:
            if tensor is None and any(varies(scope.get(p.name)) for scope in scopes):
                return None  # decided per tensor
            at = f"tensor {tensor}: " if tensor else ""
            raise OtaMergeError(f"{at}{where}: {method.name} needs parameter {p.name!r}")
        return coerce(out)

    glob = {p.name: value(p, shared, "parameters") for p in method.params if not p.per_model}
    per_model = [{p.name: value(p, [*own, *shared], f"model {ref}") for p in method.params if p.per_model}
                 for ref, own in models]
    return glob, per_model


def tensor_params(cfg: MergeConfig, tensor: str, t: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The global and per-model parameters of one tensor (the config's own where nothing varies)."""
    if not cfg.varies:
        return cfg.params, [m.params for m in cfg.models]
    return resolve_params(cfg.method, [cfg.settings], [(m.ref, [m.settings]) for m in cfg.models], tensor, t)


def slice_params(cfg: MergeConfig, piece: Slice, refs: list[str], tensor: str, t: float
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The parameters of one tensor of a slice, for the slice's sources ``refs`` (the base's left out)."""
    own = {src.ref: src.settings for src in piece.sources}
    return resolve_params(cfg.method, [piece.settings, cfg.settings], [(r, [own[r]]) for r in refs], tensor, t)


def parse_config(raw: dict[str, Any]) -> MergeConfig:
    if not isinstance(raw, dict):
        raise OtaMergeError("merge config must be a mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise OtaMergeError(f"merge config: unknown key(s) {', '.join(sorted(unknown))}")
    if ("models" in raw) == ("slices" in raw):
        raise OtaMergeError("merge config: give either models or slices")
    if "merge_method" not in raw:
        raise OtaMergeError("merge config: merge_method is missing")
    method = method_spec(str(raw["merge_method"]))
    base = raw.get("base_model")
    if isinstance(base, dict):
        base = base.get("model")
    base = str(base) if base is not None else None
    slices = parse_slices(raw["slices"], lambda g, m: check_settings(method, g, m)) if "slices" in raw else ()
    # with slices, the models are their sources, each once (their parameters are per slice)
    entries = list(dict.fromkeys(src.ref for s in slices for src in s.sources)) if slices else raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise OtaMergeError("merge config: models must be a non-empty list")
    models_raw: list[tuple[str, dict[str, Any]]] = []
    for e in entries:
        ref = e.get("model") if isinstance(e, dict) else e
        if not isinstance(ref, str) or not ref:
            raise OtaMergeError(f"merge config: each models entry needs a model, got {e!r}")
        if "+" in ref and not Path(ref).exists():
            raise OtaMergeError(f"model {ref}: LoRA 'model+adapter' references are not supported")
        params = (e.get("parameters") or {}) if isinstance(e, dict) else {}
        if not isinstance(params, dict):
            raise OtaMergeError(f"model {ref}: parameters must be a mapping")
        if method.base != "ignored" and ref == base:
            continue  # the base listed among the models: it is the base, not an input
        models_raw.append((ref, params))
    if method.base == "required" and base is None:
        raise OtaMergeError(f"merge_method {method.name} needs a base_model")
    if not models_raw:
        raise OtaMergeError("merge config: no model to merge besides the base")
    global_raw = raw.get("parameters") or {}
    if not isinstance(global_raw, dict):
        raise OtaMergeError("merge config: parameters must be a mapping")
    settings, model_settings = check_settings(method, global_raw, models_raw)
    params, per_model = resolve_params(method, [settings],
                                       [(ref, [s]) for (ref, _), s in zip(models_raw, model_settings)])
    return MergeConfig(
        method=method,
        base=base if method.base != "ignored" else None,
        models=[ModelSpec(ref, p, s) for (ref, _), p, s in zip(models_raw, per_model, model_settings)],
        params=params,
        dtype=_dtype(raw.get("dtype"), "dtype"),
        out_dtype=_dtype(raw.get("out_dtype"), "out_dtype"),
        tokenizer_source=raw.get("tokenizer_source"),
        raw=raw,
        settings=settings,
        slices=slices,
    )


def read_config(path: str | Path) -> Any:
    """A merge config file's YAML, unparsed."""
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except OSError as exc:
        raise OtaMergeError(f"cannot read merge config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise OtaMergeError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None

