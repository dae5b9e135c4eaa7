"""Adam's exp_avg_sq out of a torch optimizer state file (``optimizer.pt``), keyed by name.

A torch optimizer's state dict numbers parameters by position through its param_groups;
it holds no names. The names therefore come from how the training built those groups, and
two ways cover what users have:

- ``torch.optim.AdamW(model.parameters())``: one group, the model's parameter order;
- ``transformers.Trainer`` (and TRL and LLaMA-Factory, which use it): two groups, first
  the parameters that get weight decay, then biases and norm weights, each group in the
  model's order. The split is the Trainer's own ``get_decay_parameter_names``.

The Trainer's layout is taken when the file's group sizes are exactly its split, the
model's order otherwise; either way every state's shape must equal its parameter's, or
nothing is written and the error names the first mismatch. Tied weights appear once (as
``named_parameters`` lists them), so a tied ``lm_head`` has no moment of its own.

The file is read with ``torch.load(weights_only=True, mmap=True)``: no pickled code runs,
and exp_avg (the first moments, as large as the model) is never read into memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from otamerge.errors import OtaMergeError

TRAINER_STATE = "trainer_state.json"  # written by transformers.Trainer next to optimizer.pt


def _meta_model(model_dir: str | Path) -> torch.nn.Module:
    """The model of ``model_dir``'s config.json on the meta device: no weights, no remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def parameter_names(model_dir: str | Path) -> list[str]:
    """The model's parameters in module order, tied ones once (the order ``model.parameters()``
    gives a torch optimizer)."""
    return [n for n, _ in _meta_model(model_dir).named_parameters()]


def group_layouts(model: torch.nn.Module) -> dict[str, list[list[str]]]:
    """The ways a training run may have grouped ``model``'s parameters: name -> groups of names."""
    from transformers import Trainer

    names = [n for n, _ in model.named_parameters()]
    decay = set(Trainer.get_decay_parameter_names(None, model))  # the method reads no trainer state
    return {"transformers.Trainer": [[n for n in names if n in decay], [n for n in names if n not in decay]],
            "model order": [names]}


def load_state(pt_file: str | Path) -> dict:
    """A torch optimizer state dict, loaded without running pickled code."""
    try:
        state = torch.load(pt_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise OtaMergeError(f"{pt_file}: not a loadable optimizer state with weights_only=True "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise OtaMergeError(f"{pt_file}: no 'state' in the optimizer file")
    return state


def _file_groups(state: dict) -> list[list[int]]:
    groups = [list(g.get("params", [])) for g in state.get("param_groups", [])]
    return groups if any(groups) else [sorted(state["state"])]


def _pairing(groups: list[list[int]], layout: list[list[str]]) -> list[tuple[int, str]]:
    """(id, name) of each parameter: per group where the group sizes match, else in flat order."""
    if [len(g) for g in groups] == [len(g) for g in layout]:
        return [p for ids, names in zip(groups, layout) for p in zip(ids, names)]
    return list(zip([i for g in groups for i in g], [n for g in layout for n in g]))


def _mismatch(state: dict, pairs: list[tuple[int, str]], shapes: dict[str, torch.Size]) -> str | None:
    """Why ``pairs`` cannot be the file's naming, or None if every state fits its parameter."""
    for i, name in pairs:
        entry = state["state"].get(i)
        if not entry or "exp_avg_sq" not in entry:
            return f"parameter {i} ({name}) has no exp_avg_sq"
        if entry["exp_avg_sq"].shape != shapes[name]:
            return (f"parameter {i}'s exp_avg_sq has shape {list(entry['exp_avg_sq'].shape)}, "
                    f"{name} has {list(shapes[name])}")
    return None


def match_names(state: dict, model: torch.nn.Module, label: str) -> tuple[str, list[tuple[int, str]]]:
    """(layout, [(id, name)]) naming every state of an optimizer file, or a one-line error."""
    groups = _file_groups(state)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    n_file = sum(len(g) for g in groups)
    why = []
    for layout, named in group_layouts(model).items():
        sizes = [len(g) for g in named]
        exact = [len(g) for g in groups] == sizes
        if layout != "model order" and not exact:
            why.append(f"not {layout}'s grouping ({sizes})")
            continue
        if n_file != len(shapes):
            why.append(f"{n_file} parameters, the model has {len(shapes)}")
            break
        pairs = _pairing(groups, named)
        problem = _mismatch(state, pairs, shapes)
        if problem is None:
            return layout, pairs
        why.append(f"in {layout}, {problem}")
    raise OtaMergeError(f"{label}: its states in groups of {[len(g) for g in groups]} cannot be matched to the "
                        f"model's parameters: {'; '.join(why)}")


def optimizer_moments(pt_file: str | Path, model_dir: str | Path,
                      trainer_state: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(exp_avg_sq keyed by parameter name, the optimizer's record) of an optimizer file, or
    of a sharded checkpoint folder (curvature/sharded_state.py).

    The record holds Adam's step count and betas (for bias correction), the layout the names
    came from, and the Trainer's global step from ``trainer_state`` (by default the
    ``trainer_state.json`` beside the file, where there is one). A sharded folder's record
    holds the step count only: its files carry no betas, and ``trainer_state`` is not read."""
    if Path(pt_file).is_dir():  # FSDP's or DeepSpeed's per-parameter states, by name
        from otamerge.curvature.sharded_state import sharded_moments

        return sharded_moments(pt_file, {n: p.shape for n, p in _meta_model(model_dir).named_parameters()})
    state = load_state(pt_file)
    layout, pairs = match_names(state, _meta_model(model_dir), str(pt_file))
    moments = {name: state["state"][i]["exp_avg_sq"].float().contiguous() for i, name in pairs}
    trainer = Path(pt_file).with_name(TRAINER_STATE) if trainer_state is None else Path(trainer_state)
    return moments, _record(state, pairs, layout, trainer)


def _record(state: dict, pairs: list[tuple[int, str]], layout: str, trainer: Path) -> dict:
    steps = {int(state["state"][i]["step"]) for i, _ in pairs if "step" in state["state"][i]}
    betas = {tuple(float(b) for b in g["betas"]) for g in state.get("param_groups", []) if "betas" in g}
    record = {"optimizer": "torch optimizer state", "layout": layout,
              "step": steps.pop() if len(steps) == 1 else None,
              "betas": list(betas.pop()) if len(betas) == 1 else None}
    if trainer.is_file():
        try:
            record["global_step"] = json.loads(trainer.read_text()).get("global_step")
        except ValueError:
            raise OtaMergeError(f"{trainer}: not valid JSON") from None
    return {k: v for k, v in record.items() if v is not None}


def convert(pt_file: str | Path, model_dir: str | Path, out: str | Path,
            trainer_state: str | Path | None = None) -> dict:
    """Write the optimizer file's exp_avg_sq as a moments safetensors file (fp32, keyed by
    name, the record as its ``optimizer_state`` metadata); returns the record."""
    from otamerge.curvature.moments import OPTIMIZER_KEY
    from otamerge.io.atomic import write_safetensors

    moments, record = optimizer_moments(pt_file, model_dir, trainer_state)
    write_safetensors(out, moments, {OPTIMIZER_KEY: json.dumps(record, sort_keys=True)})
    return record
