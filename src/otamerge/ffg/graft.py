"""Fast Fisher Grafting: keep an expert's most salient edits, revert the rest to the base.

saliency s = v * (w_expert - w_base)^2   (metric "fisher"; "magnitude": |w_expert - w_base|;
                                         "sparsegpt": v is the OBS importance 1/[H^-1]_jj
                                         of the base's calibration Hessians, hessians.py)

ONE threshold over every parameter of the expert (embeddings, lm_head and norms too)
keeps the top ``density`` fraction; grafted = where(s >= threshold, expert, base), which
is exactly what OTA of this one expert with that threshold gives. A sweep of densities
shares its passes: two histogram passes find every threshold exactly (threshold.py),
one more pass writes every grafted model and its statistics.json together.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from otamerge.io.atomic import atomic_dir, check_space, write_json
from otamerge.io.checkpoint import CHUNK_BYTES, Checkpoint, check_compatible, row_ranges
from otamerge.ffg.densities import check_density, density_label
from otamerge.names import STATISTICS
from otamerge.device import pick_device
from otamerge.errors import OtaMergeError
from otamerge.ffg import SALIENCIES
from otamerge.io.lora import is_adapter, open_model
from otamerge.curvature.moments import OBS_KIND, OPTIMIZER_KEY, Moments, check_full_moments, check_importance_kind
from otamerge.ffg.threshold import exact_thresholds, keep_count
from otamerge.io.tokenizer_source import copy_tokenizer
from otamerge.io.writer import ShardedWriter, TensorPlan

IMPORTANCE_FILE = {"fisher": "moments file", "sparsegpt": "OBS importance file (otamerge importance)"}


def saliency(metric: str, expert: torch.Tensor, base: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """fp32 saliency of each entry (same operations as OTA's mask, so masks agree)."""
    tau = expert.float() - base.float()
    if metric != "magnitude":
        return v * tau.square()
    return tau.abs()


@dataclass
class _TensorStats:
    total: int
    kept: int = 0
    ties: int = 0
    rows_any: int = 0
    cols_any: int = 0
    cols: torch.Tensor | None = None  # columns with a kept entry, while the tensor is read

    def as_dict(self, shape: tuple[int, ...]) -> dict:
        out = {"shape": list(shape), "kept": self.kept, "total": self.total,
               "kept_fraction": self.kept / self.total if self.total else 0.0}
        if len(shape) == 2:
            out["rows_any"] = self.rows_any
            out["cols_any"] = self.cols_any
        return out


@dataclass(frozen=True)
class FfgOptions:
    chunk_bytes: int = CHUNK_BYTES
    out_shard_bytes: int = 5 << 30
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda[:N]: where saliencies, histograms and grafts are computed


@dataclass
class _Inputs:
    base: Checkpoint
    expert: Checkpoint
    moments: Moments | None
    names: list[str] = field(default_factory=list)
    device: torch.device = torch.device("cpu")


def _open(base_dir: Path, expert_dir: Path, moments_path: Path | None, metric: str, device: str) -> _Inputs:
    if metric not in SALIENCIES:
        raise OtaMergeError(f"unknown FFG metric {metric!r}; use {', '.join(SALIENCIES)}")
    dev = pick_device(device)
    base = Checkpoint(base_dir, f"base model {base_dir}")
    expert = open_model(expert_dir, f"expert {expert_dir}", base)
    names = [n for n in base.names() if base.dtype(n).is_floating_point]
    check_compatible(base, expert, base.names())
    moments = None
    if metric in IMPORTANCE_FILE:
        if moments_path is None:
            raise OtaMergeError(f"expert {expert_dir}: the {metric} metric needs a {IMPORTANCE_FILE[metric]}")
        moments = Moments(moments_path, f"{metric} importance of expert {expert_dir}")
        check_importance_kind(moments, metric)
        check_full_moments(moments, base, names, expert_dir)
    return _Inputs(base, expert, moments, names, dev)


def _chunks(inp: _Inputs, metric: str, opts: FfgOptions, desc: str):
    """(name, rows, expert chunk, base chunk, saliency chunk) over all float tensors."""
    sources = [c for c in (inp.expert, inp.base, inp.moments) if c is not None]
    for i, name in enumerate(tqdm(inp.names, desc=desc, unit="tensor", disable=not opts.progress)):
        if i + 1 < len(inp.names):  # read the next tensor while this one is worked on
            for c in sources:
                c.prefetch(inp.names[i + 1])
        for rows in row_ranges(inp.base.shape(name), opts.chunk_bytes) or [None]:
            e, b = inp.expert.get(name, rows).to(inp.device), inp.base.get(name, rows).to(inp.device)
            v = inp.moments.get(name, rows).to(inp.device) if inp.moments is not None else None
            yield name, rows, e, b, saliency(metric, e, b, v)


def ffg_sweep(base_dir: str | Path, expert_dir: str | Path, moments_path: str | Path | None,
              densities: list[float], metric: str, out_dir: str | Path,
              opts: FfgOptions = FfgOptions()) -> dict[float, Path]:
    """Graft the expert at each density into ``out_dir/<density>/`` (model folder with
    statistics.json); returns density -> folder."""
    densities = sorted({check_density(d) for d in densities})
    return ffg_graft(base_dir, expert_dir, moments_path,
                     {d: Path(out_dir) / density_label(d) for d in densities}, metric, opts)


def ffg_graft(base_dir: str | Path, expert_dir: str | Path, moments_path: str | Path | None,
              folders: dict[float, Path], metric: str, opts: FfgOptions = FfgOptions()) -> dict[float, Path]:
    """Graft the expert at each density into its own folder (model + statistics.json)."""
    folders = {check_density(d): Path(f) for d, f in sorted(folders.items())}
    if not folders:
        raise OtaMergeError(f"FFG of {expert_dir}: no density to graft at")
    densities = list(folders)
    base_dir, expert_dir = Path(base_dir), Path(expert_dir)
    inp = _open(base_dir, expert_dir, Path(moments_path) if moments_path else None, metric, opts.device)
    try:
        model_bytes = sum(TensorPlan(n, inp.base.shape(n), inp.expert.dtype(n)).nbytes for n in inp.base.names())
        check_space(len(densities) * model_bytes, folders[densities[0]].parent,
                    f"FFG of {expert_dir} at {len(densities)} densities")

        def sal():
            return (s for *_, s in _chunks(inp, metric, opts, "FFG thresholds"))

        thresholds, total = exact_thresholds(sal, densities)
        return _graft(inp, folders, thresholds, total, metric, opts, base_dir, expert_dir)
    finally:
        for c in (inp.base, inp.expert, inp.moments):
            if c is not None:
                c.close()


def _graft(inp: _Inputs, folders: dict[float, Path], thresholds: list[float], total: int, metric: str,
           opts: FfgOptions, base_dir: Path, expert_dir: Path) -> dict[float, Path]:
    densities = list(folders)
    plans = [TensorPlan(n, inp.base.shape(n), inp.expert.dtype(n)) for n in inp.base.names()]
    stats = {d: {n: _TensorStats(_numel(inp.base.shape(n))) for n in inp.names} for d in densities}
    with ExitStack() as stack:
        tmp = {d: stack.enter_context(atomic_dir(folders[d])) for d in densities}
        writers = {d: ShardedWriter(tmp[d], plans, opts.out_shard_bytes) for d in densities}
        chunks = _chunks(inp, metric, opts, "FFG graft")
        for plan in plans:
            if plan.name not in stats[densities[0]]:  # integer buffers: the base's
                for d in densities:
                    writers[d].write(plan.name, inp.base.get(plan.name))
                continue
            for rows in row_ranges(plan.shape, opts.chunk_bytes) or [None]:
                name, _, e, b, s = next(chunks)
                for d, thr in zip(densities, thresholds):
                    keep = s >= thr
                    writers[d].write(name, torch.where(keep, e, b).to(plan.dtype).cpu())
                    _count(stats[d][name], keep, s, thr)
            for d in densities:
                _finish(stats[d][plan.name])
        for d, thr in zip(densities, thresholds):
            writers[d].close()
            _copy_model_files(base_dir if is_adapter(expert_dir) else expert_dir, tmp[d])
            write_json(tmp[d] / STATISTICS, _statistics(inp, d, thr, total, metric, stats[d], base_dir, expert_dir))
    return folders


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def _count(st: _TensorStats, keep: torch.Tensor, s: torch.Tensor, thr: float) -> None:
    st.kept += int(keep.sum())
    st.ties += int((s == thr).sum())
    if keep.dim() == 2:
        st.rows_any += int(keep.any(dim=1).sum())
        cols = keep.any(dim=0)
        st.cols = cols if st.cols is None else st.cols | cols


def _finish(st: _TensorStats) -> None:
    """Reduce per-tensor buffers to numbers: small tensors kept alive across the whole
    pass would fragment the heap between the large chunk buffers and grow the RSS."""
    if st.cols is not None:
        st.cols_any = int(st.cols.sum())
        st.cols = None


def _copy_model_files(src: Path, dst: Path) -> None:
    for f in ("config.json", "generation_config.json"):
        if (src / f).is_file():
            shutil.copyfile(src / f, dst / f)
    copy_tokenizer(src, dst)


def _statistics(inp: _Inputs, density: float, thr: float, total: int, metric: str,
                per_tensor: dict[str, _TensorStats], base_dir: Path, expert_dir: Path) -> dict:
    kept = sum(st.kept for st in per_tensor.values())
    moments = None
    if inp.moments is not None:
        moments = {"kind": inp.moments.kind, "rank": inp.moments.rank, "file": str(inp.moments.path),
                   "optimizer_state": _optimizer_state(inp.moments)}
    return {
        "density": density,
        "metric": metric,
        "moments": moments["kind"] if moments else None,
        "moments_info": moments,
        "threshold": thr,
        "k": keep_count(density, total),
        "kept": kept,
        "total": total,
        "achieved_density": kept / total if total else 0.0,
        "ties_at_threshold": sum(st.ties for st in per_tensor.values()),
        # tensors ranked by |t| where the importance has no curvature for them
        "fallback_magnitude": (inp.moments.source_metadata.get("fallback_magnitude", [])
                               if inp.moments is not None and inp.moments.kind == OBS_KIND else []),
        "base": str(base_dir),
        "expert": str(expert_dir),
        "tensors": {n: st.as_dict(inp.base.shape(n)) for n, st in per_tensor.items()},
    }


def _optimizer_state(moments: Moments) -> dict | None:
    raw = moments.source_metadata.get(OPTIMIZER_KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
