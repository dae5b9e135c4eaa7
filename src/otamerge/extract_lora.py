"""A model's difference to its base as a PEFT LoRA adapter (``otamerge extract-lora``).

For every linear layer, the task vector D = W - W_base (in fp32, from the stored values)
is cut to its best rank-r approximation by a truncated SVD, D ~ U_r S_r V_r^T (Eckart and
Young: no rank-r matrix is closer in the Frobenius norm), and stored as PEFT's factors

    lora_A = S_r^1/2 V_r^T   (r x in),   lora_B = U_r S_r^1/2   (out x r),   scale alpha / r = 1

(``distribute_scale`` false: lora_A = S_r V_r^T, lora_B = U_r), as mergekit 0.1.5's
``mergekit-extract-lora`` does. Like its default, embeddings, norms and every other module
that is not a linear layer are saved at full rank (``modules_to_save``), and a linear
layer's bias delta goes to ``lora_B.bias`` (``lora_bias``; mergekit writes it without
setting that flag, so peft drops it there). Differences from mergekit, on purpose: the
task vector is taken in fp32 (mergekit subtracts in the stored dtype, bf16 included),
and layers whose rank the threshold cuts to zero are left out instead of written with
rank 0. Which module is what comes from transformers' own class for the config,
instantiated on the meta device (no weights, no remote code); tensors are read one at a
time, so memory holds one layer and the adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from otamerge.device import pick_device
from otamerge.errors import OtaMergeError
from otamerge.io.atomic import atomic_dir, write_json, write_safetensors
from otamerge.io.checkpoint import Checkpoint, check_compatible
from otamerge.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREFIX

REPORT = "extraction.json"


@dataclass(frozen=True)
class ExtractOptions:
    rank: int = 128                # mergekit-extract-lora's --max-rank default
    sv_epsilon: float = 0.0        # singular values at or below it are dropped
    distribute_scale: bool = True
    device: str = "auto"
    progress: bool = True


def decompose(delta: torch.Tensor, rank: int, sv_epsilon: float = 0.0,
              distribute_scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) in fp32 with B @ A the best approximation of ``delta`` (out x in) of rank at
    most ``rank``, fewer where singular values are <= ``sv_epsilon``; A has 0 rows if none is left."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.numel(), int((s > sv_epsilon).sum()))
    if distribute_scale:
        root = s[:r].sqrt()
        return root[:, None] * vh[:r], u[:, :r] * root
    return s[:r, None] * vh[:r], u[:, :r].clone()


def module_kinds(model_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """module name -> ``linear`` or ``full`` (saved whole), for every module with a weight;
    and for tied embeddings {output embedding weight: input embedding weight}."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise OtaMergeError(f"{model_dir}: transformers cannot build its architecture ({exc})") from None
    embed_in, embed_out = model.get_input_embeddings(), model.get_output_embeddings()
    kinds, names = {}, {}
    for name, module in model.named_modules():
        names[id(module)] = name
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            linear = isinstance(module, torch.nn.Linear) and module is not embed_in and module is not embed_out
            kinds[name] = "linear" if linear else "full"
    tied = {}
    if embed_out is not None and getattr(config, "tie_word_embeddings", False):
        tied[f"{names[id(embed_out)]}.weight"] = f"{names[id(embed_in)]}.weight"
    return kinds, tied


def _module_of(tensor: str, kinds: dict[str, str]) -> tuple[str, str]:
    module, _, leaf = tensor.rpartition(".")
    if module not in kinds:
        raise OtaMergeError(f"tensor {tensor} belongs to no module of the model's architecture")
    return module, leaf


def _adapter_config(base_dir: Path, ranks: dict[str, int], saved: set[str], lora_bias: bool) -> dict:
    """PEFT's adapter_config.json: the largest rank as ``r``, the others by module; alpha = r
    (scale 1: B A is the difference itself)."""
    r = max(ranks.values())
    other = {m: k for m, k in ranks.items() if k != r}
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_dir),
            "r": r, "lora_alpha": r, "rank_pattern": other, "alpha_pattern": other,
            "target_modules": sorted({m.rpartition(".")[2] for m in ranks}),
            "modules_to_save": sorted(saved), "lora_dropout": 0.0, "fan_in_fan_out": False,
            "use_rslora": False, "lora_bias": lora_bias, "inference_mode": True}


def extract_lora(model_dir: str | Path, base_dir: str | Path, out_dir: str | Path,
                 opts: ExtractOptions = ExtractOptions()) -> dict:
    """Write ``out_dir`` (adapter_config.json, adapter_model.safetensors, extraction.json)
    and return the report: per linear layer its rank and relative Frobenius error
    ||D - B A|| / ||D|| (after rounding A and B to the model's dtype), and the totals."""
    if opts.rank < 1:
        raise OtaMergeError(f"rank must be at least 1, not {opts.rank}")
    model_dir, base_dir = Path(model_dir), Path(base_dir)
    model, base = Checkpoint(model_dir, "model"), Checkpoint(base_dir, "base")
    device = pick_device(opts.device)
    try:
        check_compatible(model, base, model.names())
        kinds, tied = module_kinds(model_dir)
        tensors, layers, saved, ranks = {}, {}, set(), {}
        err2 = norm2 = 0.0
        for name in tqdm(model.names(), desc="extract-lora", unit="tensor", disable=not opts.progress):
            module, leaf = _module_of(name, kinds)
            w = model.get(name)
            if kinds[module] == "full":
                tensors[PREFIX + name] = w
                saved.add(module.rpartition(".")[2])
                continue
            delta = w.to(device, torch.float32) - base.get(name).to(device, torch.float32)
            if leaf == "bias":
                tensors[f"{PREFIX}{module}.lora_B.bias"] = delta.to(w.dtype).cpu()
                continue
            a, b = (t.to(w.dtype) for t in decompose(delta, opts.rank, opts.sv_epsilon, opts.distribute_scale))
            d2 = float(delta.square().sum())
            e2 = float((delta - b.float() @ a.float()).square().sum())
            layers[module] = {"rank": a.shape[0], "relative_error": math.sqrt(e2 / d2) if d2 else 0.0}
            err2, norm2 = err2 + e2, norm2 + d2
            if a.shape[0]:
                ranks[module] = a.shape[0]
                tensors[f"{PREFIX}{module}.lora_A.weight"] = a.cpu()
                tensors[f"{PREFIX}{module}.lora_B.weight"] = b.cpu()
        # a tied head is not in the checkpoint; saved beside the embedding (as mergekit does),
        # or peft's merge would keep the base's head tied to the replaced embedding
        for head, embedding in tied.items():
            if head not in model and PREFIX + embedding in tensors:
                tensors[PREFIX + head] = tensors[PREFIX + embedding].clone()
                saved.add(head.rpartition(".")[0].rpartition(".")[2])
    finally:
        model.close()
        base.close()
    if not ranks:
        raise OtaMergeError(f"{model_dir}: no linear layer keeps a singular value above {opts.sv_epsilon}")
    config = _adapter_config(base_dir, ranks, saved, any(k.endswith(".lora_B.bias") for k in tensors))
    report = {"model": str(model_dir), "base": str(base_dir), "max_rank": opts.rank, "sv_epsilon": opts.sv_epsilon,
              "relative_error": math.sqrt(err2 / norm2) if norm2 else 0.0,
              "adapter_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
              "lora_bytes": sum(t.numel() * t.element_size() for k, t in tensors.items() if ".lora_" in k),
              "layers": layers}
    with atomic_dir(out_dir) as tmp:
        write_safetensors(tmp / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
        write_json(tmp / ADAPTER_CONFIG, config)
        write_json(tmp / REPORT, report)
    return report
