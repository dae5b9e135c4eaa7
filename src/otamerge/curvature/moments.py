"""Second moments (Adam's exp_avg_sq): loading, validation, and low-rank compression.

A moments file is safetensors keyed by parameter name (``NAME`` or ``NAME.exp_avg_sq``),
or a compressed file written by ``otamerge compress-moments``:

    rank 1:  NAME.rank1.row (m), NAME.rank1.col (n), NAME.rank1.total (scalar)
             v_hat = row col^T / total                  (AdaFactor-style; O(m + n))
    rank r:  NAME.rankr.us (m x r, U * S), NAME.rankr.vh (r x n)
             v_hat = relu(us @ vh)                      (truncated SVD, clipped at 0)
    1-D tensors are stored as they are, under NAME.

Both expand lazily, one tensor or row chunk at a time. A torch optimizer state file
(``.pt``) becomes such a file through ``optimizer_state.convert``, which names its states.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from tqdm import tqdm

from otamerge.io.atomic import write_safetensors
from otamerge.io.checkpoint import Checkpoint, row_ranges
from otamerge.errors import OtaMergeError
from otamerge.io.lora import is_adapter
from otamerge.io.writer import ShardedWriter, TensorPlan

META_KEY = "otamerge_moments"  # safetensors metadata of compressed files: kind, rank, source
OPTIMIZER_KEY = "optimizer_state"  # metadata of a moments file: the optimizer's step count and betas (JSON)
BIAS_KEY = "otamerge_bias_correction"  # metadata of bias-corrected moments: step, beta2, factor
OBS_KIND = "sparsegpt"  # the kind of an OBS importance file (hessians.py writes it in this format)


def rank1(v: torch.Tensor) -> torch.Tensor:
    """AdaFactor-style rank-1 approximation of a non-negative matrix:
    v_hat = r c^T / sum(v) with r the row sums and c the column sums (zeros if v is 0).
    1-D tensors are returned as they are."""
    if v.dim() != 2:
        return v
    total = v.sum()
    if total == 0:
        return torch.zeros_like(v)
    return torch.outer(v.sum(dim=1), v.sum(dim=0) / total)


def rank_r(v: torch.Tensor, r: int) -> torch.Tensor:
    """Truncated SVD of rank ``r``, negatives clipped to 0 (v is a non-negative curvature)."""
    if v.dim() != 2:
        return v
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    return torch.relu((u[:, :r] * s[:r]) @ vh[:r])


class Moments:
    """Lazy, validated access to one model's moments, full or compressed.

    ``get(name, rows)`` returns fp32 values of the moment of parameter ``name`` (rows
    ``start:stop`` of it), expanded from the compressed form where needed, and refuses
    NaN, Inf and negative values with an error naming the file and tensor.
    """

    def __init__(self, path: str | Path, label: str):
        self.ckpt = Checkpoint(path, label)
        self.label = label
        self.path = Path(path)
        meta = self.ckpt.file_metadata()
        info = json.loads(meta.get(META_KEY, "{}"))
        self.kind: str = info.get("kind", "full")
        self.rank: int | None = info.get("rank")
        self.source_metadata: dict = info.get("source_metadata", meta)

    def _key(self, name: str) -> str:
        for key in (name, f"{name}.exp_avg_sq", f"{name}.rank1.row", f"{name}.rankr.us"):
            if key in self.ckpt:
                return key
        raise OtaMergeError(f"{self.label}: tensor {name} missing from moments file {self.path}")

    def parameters(self) -> list[str]:
        """The parameter names of a full moments file (``NAME`` or ``NAME.exp_avg_sq``), sorted."""
        return sorted({k.removesuffix(".exp_avg_sq") for k in self.ckpt.names()})

    def prefetch(self, name: str) -> None:
        for key in (name, f"{name}.exp_avg_sq"):  # full moments; compressed ones are small
            self.ckpt.prefetch(key)

    def shape(self, name: str) -> tuple[int, ...]:
        key = self._key(name)
        if key.endswith(".rank1.row"):
            return (self.ckpt.shape(key)[0], self.ckpt.shape(f"{name}.rank1.col")[0])
        if key.endswith(".rankr.us"):
            return (self.ckpt.shape(key)[0], self.ckpt.shape(f"{name}.rankr.vh")[1])
        return self.ckpt.shape(key)

    def file_of(self, name: str) -> Path:
        return self.ckpt.file_of(self._key(name))

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        key = self._key(name)
        if key.endswith(".rank1.row"):
            r = self.ckpt.get(key, rows).float()
            c = self.ckpt.get(f"{name}.rank1.col").float()
            total = float(self.ckpt.get(f"{name}.rank1.total"))
            v = torch.outer(r, c / total) if total > 0 else torch.zeros(len(r), len(c))
        elif key.endswith(".rankr.us"):
            v = torch.relu(self.ckpt.get(key, rows).float() @ self.ckpt.get(f"{name}.rankr.vh").float())
        else:
            v = self.ckpt.get(key, rows).float()
        if v.numel():
            # one pass, no temporaries: NaN makes lo >= 0 false; then the two checks tell which
            lo, hi = torch.aminmax(v)
            if not (bool(lo >= 0) and bool(hi < math.inf)):
                if not bool(torch.isfinite(v).all()):
                    raise OtaMergeError(f"{self.label}: moments tensor {key} in {self.file_of(name)} has NaN or Inf "
                                        "values")
                raise OtaMergeError(f"{self.label}: moments tensor {key} in {self.file_of(name)} has negative values")
        return v

    def check_against(self, weights: Checkpoint, names: Iterable[str]) -> None:
        """Every named (floating) weight has a moment of the same shape (headers only)."""
        for name in names:
            if not weights.dtype(name).is_floating_point:
                continue
            if self.shape(name) != weights.shape(name):
                raise OtaMergeError(f"{self.label}: moments tensor {self._key(name)} in {self.file_of(name)} has "
                                    f"shape {list(self.shape(name))}, the weights have {list(weights.shape(name))}")

    def close(self) -> None:
        self.ckpt.close()


def check_importance_kind(moments: Moments, metric: str) -> None:
    """An OBS importance file only for sparsegpt, and Adam moments only for fisher."""
    if metric != "magnitude" and (moments.kind == OBS_KIND) != (metric == OBS_KIND):
        raise OtaMergeError(f"{moments.path}: a {moments.kind} importance file given for the {metric} metric")


def check_full_moments(moments: Moments, weights: Checkpoint, names: list[str], model_dir: str | Path) -> None:
    """Moments cover every weight at full shape; for a LoRA expert say why they do not."""
    try:
        moments.check_against(weights, names)
    except OtaMergeError as exc:
        if is_adapter(model_dir):
            raise OtaMergeError(f"{exc}: {model_dir} is a LoRA adapter, whose optimizer moments cover its A and B "
                                "factors; OTA and FFG with fisher need full-shape moments of every weight "
                                "(use magnitude or sparsegpt importance)") from None
        raise


def compress(src: Moments, names: list[str], out: Path, rank: int = 1, progress: bool = True) -> dict:
    """Write the rank-``rank`` compression of ``src`` to ``out``; returns the storage report."""
    tensors: dict[str, torch.Tensor] = {}
    report = {"rank": rank, "full_bytes": 0, "compressed_bytes": 0, "full_bytes_2d": 0, "compressed_bytes_2d": 0}
    for name in tqdm(names, desc=f"compress moments (rank {rank})", unit="tensor", disable=not progress):
        v = src.get(name).contiguous()
        if v.dim() == 2 and rank == 1:
            total = v.sum(dtype=torch.float64)
            parts = {f"{name}.rank1.row": v.sum(dim=1, dtype=torch.float64).float(),
                     f"{name}.rank1.col": v.sum(dim=0, dtype=torch.float64).float(),
                     f"{name}.rank1.total": total.float()}
        elif v.dim() == 2:
            u, s, vh = torch.linalg.svd(v.double(), full_matrices=False)
            parts = {f"{name}.rankr.us": (u[:, :rank] * s[:rank]).float().contiguous(),
                     f"{name}.rankr.vh": vh[:rank].float().contiguous()}
        else:
            parts = {name: v}
        tensors.update(parts)
        full = v.numel() * 4
        small = sum(t.numel() * 4 for t in parts.values())
        report["full_bytes"] += full
        report["compressed_bytes"] += small
        if v.dim() == 2:
            report["full_bytes_2d"] += full
            report["compressed_bytes_2d"] += small
    for k in ("", "_2d"):
        full = report[f"full_bytes{k}"]
        report[f"reduction{k}"] = 1 - report[f"compressed_bytes{k}"] / full if full else 0.0
    kind = "rank1" if rank == 1 else "rank-r"
    meta = {META_KEY: json.dumps({"kind": kind, "rank": rank, "source": str(src.path),
                                  "source_metadata": src.source_metadata}, sort_keys=True)}
    write_safetensors(out, tensors, meta)
    return report


def adam_bias_factor(metadata: dict, step: int | None = None, beta2: float | None = None,
                     label: str = "moments") -> tuple[int, float, float]:
    """(t, beta2, 1 - beta2^t): Adam's exp_avg_sq starts at 0, so after t steps its raw value
    is (1 - beta2^t) times the running mean of g^2. ``step`` and ``beta2`` override the
    file's optimizer metadata (written by the demo's training as ``optimizer_state``)."""
    try:
        state = json.loads(metadata.get(OPTIMIZER_KEY) or "{}")
    except ValueError:
        state = {}
    step = state.get("step") if step is None else step
    beta2 = (state.get("betas") or [None, None])[1] if beta2 is None else beta2
    if step is None or beta2 is None:
        raise OtaMergeError(f"{label}: bias correction needs Adam's step count and beta2, and the file's metadata "
                            f"has no {OPTIMIZER_KEY} with them: give them per expert (optimizer: {{step, beta2}})")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1 or not 0 < float(beta2) < 1:
        raise OtaMergeError(f"{label}: bias correction needs a step count >= 1 and 0 < beta2 < 1, "
                            f"got step={step!r}, beta2={beta2!r}")
    return step, float(beta2), 1 - float(beta2) ** step


def correct_bias(src: Moments, out: str | Path, step: int | None = None, beta2: float | None = None,
                 chunk_bytes: int = 64 << 20, progress: bool = True) -> dict:
    """Write ``src`` divided by 1 - beta2^t to the safetensors file ``out``, streamed row chunk
    by row chunk (memory: one chunk); returns what was applied."""
    if src.kind != "full":
        raise OtaMergeError(f"{src.label}: bias correction applies to full exp_avg_sq, not {src.kind} moments")
    step, beta2, factor = adam_bias_factor(src.source_metadata, step, beta2, src.label)
    names = src.parameters()
    applied = {"step": step, "beta2": beta2, "factor": factor, "source": str(src.path)}
    meta = {k: v for k, v in src.source_metadata.items() if k == OPTIMIZER_KEY}
    meta[BIAS_KEY] = json.dumps(applied, sort_keys=True)
    plans = [TensorPlan(n, src.shape(n), torch.float32) for n in names]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        writer = ShardedWriter(Path(tmp), plans, max_shard_bytes=1 << 62, metadata=meta)  # one file
        for name in tqdm(names, desc="bias-correct moments", unit="tensor", disable=not progress):
            for rows in row_ranges(src.shape(name), chunk_bytes) or [None]:
                writer.write(name, src.get(name, rows) / factor)
        writer.close()
        os.replace(Path(tmp) / writer.files[0], out)
    return applied
