"""Merge execution: config -> plan -> tensor by tensor (row chunks) -> sharded writer.

Everything that can be checked from headers (files, tensor names, shapes, moments) is
checked before the output folder is created; values (NaN/Inf/negative moments) are
checked as they are read, and any error removes the temporary output folder.
"""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from otamerge.card import card_text
from otamerge.io.atomic import atomic_dir, check_space
from otamerge.io.checkpoint import CHUNK_BYTES, Checkpoint, check_compatible, row_ranges
from otamerge.io.malloc import keep_freed_memory
from otamerge.io.readahead import ChunkRead, ReadAhead
from otamerge.config import MergeConfig, parse_config, read_config, tensor_params
from otamerge.device import pick_device
from otamerge.errors import OtaMergeError
from otamerge.io.lora import open_model
from otamerge.methods.base import Implementation, TensorInputs, compute_dtype
from otamerge.methods.catalog import GRAFT
from otamerge.methods.registry import implementation
from otamerge.names import CARD, MERGE_CONFIG
from otamerge.settings import count_layers, layer_position
from otamerge.slice_merge import merge_sliced, plan_sliced
from otamerge.slices import SlicedTensor, total_layers
from otamerge.io.model_config import read_model_config
from otamerge.curvature.moments import Moments, check_full_moments, check_importance_kind
from otamerge.io.resolve import resolve_model, resolve_preconditioner
from otamerge.io.tokenizer_source import TokenizerPlan, plan_tokenizer
from otamerge.io.writer import ShardedWriter, TensorPlan


@dataclass(frozen=True)
class MergeOptions:
    device: str = "auto"                 # auto | cpu | cuda[:N]
    chunk_bytes: int = CHUNK_BYTES       # fp32 bytes of one input row chunk (bounds memory)
    out_shard_bytes: int = 5 * (1 << 30)
    seed: int = 0                        # random masks (DARE)
    progress: bool = True


@dataclass
class Plan:
    names: list[str]
    reference: Checkpoint
    base: Checkpoint | None
    models: list[Checkpoint]
    moments: list[Moments | None]
    out: list[TensorPlan]
    method: Implementation  # the engine's function for cfg.method
    whole_tensors: bool  # the method must see whole tensors (no row chunks)
    n_layers: int  # where a parameter is a gradient over the layers
    tokenizer: TokenizerPlan = field(default_factory=TokenizerPlan)
    sliced: dict[str, SlicedTensor] = field(default_factory=dict)  # config slices: output name -> its inputs
    by_ref: dict[str, Checkpoint] = field(default_factory=dict)    # config slices: each source's checkpoint


def make_plan(cfg: MergeConfig) -> Plan:
    """Open every input lazily and check names and shapes from the headers."""
    base = Checkpoint(resolve_model(cfg.base), f"base model {cfg.base}") if cfg.base else None
    models, moments = [], []
    folders = [resolve_model(spec.ref) for spec in cfg.models]
    needs_moments = cfg.method.reads_moments(cfg.params, [m.params for m in cfg.models])
    for spec, folder in zip(cfg.models, folders):
        models.append(open_model(folder, f"model {spec.ref}", base))
        if needs_moments:
            if not spec.params.get("preconditioner_path"):
                raise OtaMergeError(f"model {spec.ref}: trim_by {cfg.params.get('trim_by')} needs its preconditioner_path "
                                    "(exp_avg_sq for fisher, the OBS importance file for sparsegpt)")
            path = resolve_preconditioner(spec.params["preconditioner_path"], folder, spec.ref)
            moments.append(Moments(path, f"moments of model {spec.ref}"))
            if "trim_by" in cfg.params:  # (OTA takes any curvature as its weights)
                check_importance_kind(moments[-1], cfg.params["trim_by"])
        else:
            moments.append(None)
    # (tokenizer_source union over different vocabularies re-indexes the embedding rows)
    refs = ([cfg.base] if base else []) + [spec.ref for spec in cfg.models]
    tokenizer, base, models = plan_tokenizer(cfg.tokenizer_source, refs, base, models, moments)
    if cfg.slices:
        if needs_moments:
            raise OtaMergeError(f"slices: merge_method {cfg.method.name} reads curvature, which slices do not take")
        first, sliced, out, by_ref = plan_sliced(cfg, base, models)
        return Plan(list(sliced), first, base, models, [None] * len(models), out, implementation(cfg.method.name),
                    True, 0, tokenizer, sliced, by_ref)
    reference = base or models[0]
    names = reference.names()
    for ckpt in models:
        check_compatible(reference, ckpt, names)
    for mom, folder in zip(moments, folders):
        if mom is not None:
            check_full_moments(mom, reference, names, folder)
    out = []
    for name in names:
        dt = reference.dtype(name)
        if dt.is_floating_point:
            dt = cfg.out_dtype or cfg.dtype or dt
        out.append(TensorPlan(name, reference.shape(name), dt))
    method = implementation(cfg.method.name)
    # a parameter that differs by tensor is resolved tensor by tensor, each read whole
    whole = cfg.varies or method.whole_tensor(cfg.params, [m.params for m in cfg.models])
    return Plan(names, reference, base, models, moments, out, method, whole, count_layers(names), tokenizer)


def _compute_dtype(plan: Plan, name: str) -> torch.dtype:
    return compute_dtype([c.dtype(name) for c in [*plan.models, *([plan.base] if plan.base else [])]])


def _ranges(plan: Plan, tp: TensorPlan, opts: MergeOptions) -> list[tuple[int, int]] | None:
    return None if plan.whole_tensors else row_ranges(tp.shape, opts.chunk_bytes)


def _chunk_reads(plan: Plan, opts: MergeOptions) -> list[ChunkRead]:
    """Every row chunk the merge will read, in order (floating tensors only)."""
    return [ChunkRead(tp.name, rows, _compute_dtype(plan, tp.name)) for tp in plan.out
            if plan.reference.dtype(tp.name).is_floating_point for rows in _ranges(plan, tp, opts) or [None]]


def _sources(plan: Plan) -> list:
    """What a chunk reads, in order (so a first bad input is the one reported before):
    moments, base, models."""
    return [c for c in [*plan.moments, plan.base, *plan.models] if c is not None]


def _split(plan: Plan, values: list[torch.Tensor]) -> tuple:
    """ReadAhead's values (one per source) as base, models and moments (None where absent)."""
    it = iter(values)
    moments = [None if mom is None else next(it) for mom in plan.moments]
    base = next(it) if plan.base else None
    return base, [next(it) for _ in plan.models], moments


def _whole_inputs(plan: Plan, name: str, device: torch.device) -> tuple:
    """Whole tensors, read when needed (no second tensor's worth read ahead), as base, models
    and moments: in their stored dtype for a method that converts them slice by slice, else
    in the compute dtype. Read in _sources' order, so a first bad input is the one reported."""
    dtype = None if plan.method.stored_inputs else _compute_dtype(plan, name)

    def load(source: Checkpoint | Moments) -> torch.Tensor:
        return source.get(name).to(device=device, dtype=dtype)

    moments = [None if mom is None else load(mom) for mom in plan.moments]
    base = load(plan.base) if plan.base else None
    return base, [load(c) for c in plan.models], moments


def _merge_tensor(cfg: MergeConfig, plan: Plan, tp: TensorPlan, device: torch.device,
                  opts: MergeOptions, writer: ShardedWriter, reader: ReadAhead | None) -> None:
    name = tp.name
    if not plan.reference.dtype(name).is_floating_point:  # integer buffers: copied as they are
        writer.write(name, plan.reference.get(name))
        return
    params, model_params = tensor_params(cfg, name, layer_position(name, plan.n_layers))
    for rows in _ranges(plan, tp, opts) or [None]:
        if reader is not None:
            base, models, moments = _split(plan, reader.take(name, rows))
        else:
            base, models, moments = _whole_inputs(plan, name, device)
        inputs = TensorInputs(
            name=name,
            base=base,
            models=models,
            moments=moments,
            model_params=model_params,
            params=params,
            seed=opts.seed,
            owned=True,  # read for this call only
            out_dtype=tp.dtype,
        )
        writer.write(name, plan.method.merge(inputs).to(tp.dtype))


def _write_config(src: Path, out: Path, dtype: torch.dtype | None, layers: int | None = None) -> None:
    config = read_model_config(src, str(src))
    if config is None:
        return
    if layers is not None:  # slices stack their layers
        config["num_hidden_layers"] = layers
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        config["dtype"] = name
        if "torch_dtype" in config:  # older transformers' key, kept consistent
            config["torch_dtype"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = src / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, out / "generation_config.json")


def run_merge(cfg: MergeConfig, out_dir: str | Path, opts: MergeOptions = MergeOptions()) -> Path:
    """Merge per ``cfg`` into ``out_dir`` (written atomically); returns ``out_dir``."""
    device = pick_device(opts.device)
    keep_freed_memory()
    plan = make_plan(cfg)
    try:
        _execute(cfg, plan, out_dir, device, opts)
    finally:
        for ckpt in {id(c): c for c in [plan.reference, *plan.models, *plan.moments] if c}.values():
            ckpt.close()
    return Path(out_dir)


def _execute(cfg: MergeConfig, plan: Plan, out_dir: str | Path, device: torch.device, opts: MergeOptions) -> None:
    check_space(sum(tp.nbytes for tp in plan.out), Path(out_dir).parent, f"merge into {out_dir}")
    with atomic_dir(out_dir) as tmp:
        writer = ShardedWriter(tmp, plan.out, opts.out_shard_bytes)
        inputs = _sources(plan)
        # row chunks are read one ahead on a thread; whole tensors as they are needed
        reader = None if plan.whole_tensors else ReadAhead(inputs, _chunk_reads(plan, opts), device)
        with reader or nullcontext():
            for i, tp in enumerate(tqdm(plan.out, desc=f"merge ({cfg.method.name})", unit="tensor",
                                        disable=not opts.progress)):
                if plan.sliced:
                    writer.write(tp.name, merge_sliced(cfg, plan.sliced[tp.name], plan.by_ref, plan.method, tp, device,
                                                       opts.seed))
                    continue
                if i + 1 < len(plan.out):  # the next tensor's bytes come in while this one is merged
                    for c in inputs:
                        c.prefetch(plan.out[i + 1].name)
                _merge_tensor(cfg, plan, tp, device, opts, writer, reader)
        writer.close()
        _write_config(plan.reference.path, tmp, cfg.out_dtype or cfg.dtype,
                      total_layers(cfg.slices) if cfg.slices else None)
        plan.tokenizer.write(tmp)
        (tmp / MERGE_CONFIG).write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
        # like mergekit's, every merged folder has a card
        (tmp / CARD).write_text(card_text(cfg))


def graft_file(cfg: MergeConfig, out_dir: str | Path, opts: MergeOptions = MergeOptions()) -> Path:
    """``merge_method: ffg`` (the paper's configs/FFG): the graft ``otamerge ffg`` writes at the
    config's density, with statistics.json. A graft copies each entry from the expert or the
    base, so ``dtype`` and ``tokenizer_source`` change nothing (one expert: one vocabulary)."""
    from otamerge.ffg.graft import FfgOptions, ffg_graft

    (expert,) = cfg.models
    folder = resolve_model(expert.ref)
    path = expert.params["preconditioner_path"]
    moments = resolve_preconditioner(path, folder, expert.ref) if path else None
    density = cfg.params["density"]
    graft_opts = FfgOptions(chunk_bytes=opts.chunk_bytes, out_shard_bytes=opts.out_shard_bytes,
                            progress=opts.progress, device=opts.device)
    return ffg_graft(resolve_model(cfg.base), folder, moments, {density: Path(out_dir)}, cfg.params["metric"],
                     graft_opts)[density]


def merge_file(config_path: str | Path, out_dir: str | Path, opts: MergeOptions = MergeOptions()) -> Path:
    return merge_raw(read_config(config_path), str(config_path), out_dir, opts)


def merge_raw(raw: dict, label: str, out_dir: str | Path, opts: MergeOptions = MergeOptions()) -> Path:
    """Merge (or graft, ``merge_method: ffg``) per a config as read from YAML; errors name ``label``."""
    try:
        cfg = parse_config(raw)
        if cfg.method is GRAFT and len(cfg.models) != 1:
            raise OtaMergeError(f"merge_method ffg grafts one expert; models lists {len(cfg.models)} besides the base")
        if cfg.method is GRAFT and cfg.varies:
            raise OtaMergeError("merge_method ffg grafts at one density: its parameters take single values")
    except OtaMergeError as exc:
        raise OtaMergeError(f"{label}: {exc}") from None
    return (graft_file if cfg.method is GRAFT else run_merge)(cfg, out_dir, opts)
