"""Merge configurations in mergekit's YAML format, parsed and checked before any work.

    merge_method: ota
    base_model: path-or-repo
    models:
      - model: path-or-repo
        parameters: {weight: 1.0, preconditioner_path: ..., precond_threshold: 1e-19}
    parameters: {...}           # global; a model's own value overrides it
    dtype: bfloat16             # output dtype unless out_dtype is given
    out_dtype: bfloat16
    tokenizer_source: base      # base | union | a model

Arithmetic is always fp32 (fp64 for fp64 inputs) and rounded once to the output dtype;
``dtype`` does not round the inputs first (mergekit computes in ``dtype``; see README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from otamerge.errors import OtaMergeError
from otamerge.methods.catalog import REQUIRED, MethodSpec, Param, method_spec

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}
TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "name"}


@dataclass(frozen=True)
class ModelSpec:
    ref: str
    params: dict[str, Any] = field(default_factory=dict)


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


def _dtype(value: Any, key: str) -> torch.dtype | None:
    if value is None:
        return None
    if str(value) not in DTYPES:
        raise OtaMergeError(f"{key}: unknown dtype {value!r}; use one of float32, bfloat16, float16, float64")
    return DTYPES[str(value)]


def _coerce(param: Param, value: Any, where: str) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        raise OtaMergeError(f"{where}: parameter {param.name} must be a single value "
                            "(gradients and tensor filters are not supported)")
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


def resolve_params(method: MethodSpec, global_raw: dict[str, Any],
                   models_raw: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Global values and each model's values (its own, else the global one, else the
    default), with unknown names, missing required values and bad values refused."""
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
    glob = {}
    for p in method.params:
        if not p.per_model:
            value = _given(global_raw.get(p.name), p.default)
            if value is REQUIRED:
                raise OtaMergeError(f"parameters: {method.name} needs parameter {p.name!r}")
            glob[p.name] = _coerce(p, value, "parameters")
    per_model = []
    for ref, raw in models_raw:
        values = {}
        for p in method.params:
            if p.per_model:
                value = _given(raw.get(p.name), _given(global_raw.get(p.name), p.default))
                if value is REQUIRED:
                    raise OtaMergeError(f"model {ref}: {method.name} needs parameter {p.name!r}")
                values[p.name] = _coerce(p, value, f"model {ref}")
        per_model.append(values)
    return glob, per_model


def parse_config(raw: dict[str, Any]) -> MergeConfig:
    if not isinstance(raw, dict):
        raise OtaMergeError("merge config must be a mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        hint = " (slices are not supported; list whole models)" if "slices" in unknown else ""
        raise OtaMergeError(f"merge config: unknown key(s) {', '.join(sorted(unknown))}{hint}")
    if "merge_method" not in raw:
        raise OtaMergeError("merge config: merge_method is missing")
    method = method_spec(str(raw["merge_method"]))
    base = raw.get("base_model")
    if isinstance(base, dict):
        base = base.get("model")
    base = str(base) if base is not None else None
    entries = raw.get("models") or []
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
    params, per_model = resolve_params(method, global_raw, models_raw)
    return MergeConfig(
        method=method,
        base=base if method.base != "ignored" else None,
        models=[ModelSpec(ref, p) for (ref, _), p in zip(models_raw, per_model)],
        params=params,
        dtype=_dtype(raw.get("dtype"), "dtype"),
        out_dtype=_dtype(raw.get("out_dtype"), "out_dtype"),
        tokenizer_source=raw.get("tokenizer_source"),
        raw=raw,
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

