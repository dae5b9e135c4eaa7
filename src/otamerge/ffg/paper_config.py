"""``merge_method: ffg``: the paper's FFG configs (its ``configs/FFG/*.yml``) as a merge config.

    merge_method: ffg
    base_model: BASE
    parameters: {density: 0.3, metric: fisher}     # metric: fisher | magnitude | sparsegpt
    models:
      - model: BASE                                  # the base may be listed; it is not an input
      - model: EXPERT
        parameters: {preconditioner_path: exp_avg_sq.safetensors}   # fisher and sparsegpt
    dtype: bfloat16
    tokenizer_source: union

It writes exactly the graft ``otamerge ffg`` writes at that density (with statistics.json).
A graft copies each entry from the expert or the base, so it keeps their dtype; ``dtype``
and ``tokenizer_source`` are accepted and change nothing (one expert: one vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otamerge.errors import OtaMergeError

KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "name"}
PARAMS = {"density", "metric"}
MODEL_PARAMS = {"preconditioner_path"}


@dataclass(frozen=True)
class FfgJob:
    base: str
    expert: str
    preconditioner: str | None
    density: float
    metric: str


def _entries(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for e in raw.get("models") or []:
        ref = e.get("model") if isinstance(e, dict) else e
        params = (e.get("parameters") or {}) if isinstance(e, dict) else {}
        if not isinstance(ref, str) or not ref or not isinstance(params, dict):
            raise OtaMergeError(f"merge config: each models entry needs a model and a parameters mapping, got {e!r}")
        unknown = set(params) - MODEL_PARAMS
        if unknown:
            raise OtaMergeError(f"model {ref}: unknown parameter(s) {', '.join(sorted(unknown))} for merge_method ffg")
        out.append((ref, params))
    return out


def parse_ffg(raw: dict[str, Any]) -> FfgJob:
    """The graft a ``merge_method: ffg`` config asks for, with every value checked."""
    unknown = set(raw) - KEYS
    if unknown:
        raise OtaMergeError(f"merge config: unknown key(s) {', '.join(sorted(unknown))}")
    base = raw.get("base_model")
    base = base.get("model") if isinstance(base, dict) else base
    if not isinstance(base, str) or not base:
        raise OtaMergeError("merge_method ffg needs a base_model")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict) or set(params) - PARAMS:
        raise OtaMergeError(f"parameters: merge_method ffg takes {', '.join(sorted(PARAMS))}, got {params!r}")
    experts = [(ref, p) for ref, p in _entries(raw) if ref != base]
    if len(experts) != 1:
        raise OtaMergeError(f"merge_method ffg grafts one expert; models lists {len(experts)} besides the base")
    (expert, eparams), = experts
    if "density" not in params:
        raise OtaMergeError("parameters: merge_method ffg needs a density")
    try:
        density = float(params["density"])
    except (TypeError, ValueError):
        raise OtaMergeError(f"parameters: density={params['density']!r} is not a number") from None
    return FfgJob(base, expert, eparams.get("preconditioner_path"), density, str(params.get("metric", "fisher")))


def run_ffg_config(raw: dict[str, Any], out_dir: str | Path, device: str = "auto", chunk_bytes: int = 4 << 20,
                   out_shard_bytes: int = 5 << 30, progress: bool = True) -> Path:
    """Graft per the config into ``out_dir`` (a model folder with statistics.json)."""
    from otamerge.ffg.graft import FfgOptions, ffg_graft
    from otamerge.io.resolve import resolve_model, resolve_preconditioner

    job = parse_ffg(raw)
    base, expert = resolve_model(job.base), resolve_model(job.expert)
    moments = resolve_preconditioner(job.preconditioner, expert, job.expert) if job.preconditioner else None
    opts = FfgOptions(chunk_bytes=chunk_bytes, out_shard_bytes=out_shard_bytes, progress=progress, device=device)
    return ffg_graft(base, expert, moments, {job.density: Path(out_dir)}, job.metric, opts)[job.density]
