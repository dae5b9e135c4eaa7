"""Several merges in one YAML file, run in dependency order, as ``mergekit-multi`` runs
them (mergekit's examples/mega.yml).

Each YAML document is a merge config with an optional ``name``. A named merge is written
to ``<intermediate_dir>/<name>``; the one unnamed merge, if any, to ``out_path``. A model
reference (``model`` of ``models`` or of slices' ``sources``, ``base_model``,
``tokenizer_source``) equal to a merge's name reads that merge's output, so the merges
run dependencies first. With ``lazy`` a merge whose folder already holds a model
(config.json and weights) is not run again, as in mergekit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from otamerge.errors import OtaMergeError

REFERENCE_KEYS = ("model", "base_model", "tokenizer_source")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class Step:
    name: str | None   # None: the final, unnamed merge
    config: dict[str, Any]  # with references to earlier merges replaced by their folders
    out: str


def _patched(value: Any, folders: dict[str, str], used: set[str]) -> Any:
    """``value`` with every model reference to a named merge replaced by its folder."""
    if isinstance(value, list):
        return [_patched(v, folders, used) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k in REFERENCE_KEYS and isinstance(v, str) and v in folders:
            used.add(v)
            out[k] = folders[v]
        else:
            out[k] = _patched(v, folders, used)
    return out


def plan_documents(text: str, intermediate_dir: str | Path, out_path: str | Path | None = None) -> list[Step]:
    """The merges of a multi-document YAML text, each after the merges it reads."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise OtaMergeError(f"multi-merge file: not valid YAML ({exc})".replace("\n", " ")) from None
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise OtaMergeError("multi-merge file: every YAML document must be a merge config (a mapping)")
    names = [d.get("name") for d in docs]
    if len(set(names)) != len(names):
        raise OtaMergeError("multi-merge file: two merges share a name (or two are unnamed)")
    if None in names and not out_path:
        raise OtaMergeError("multi-merge file has an unnamed (final) merge: give --out-path")
    folders = {n: os.path.join(str(intermediate_dir), n) for n in names if n is not None}
    configs, needs = {}, {}
    for name, doc in zip(names, docs):
        used: set[str] = set()
        configs[name] = _patched({k: v for k, v in doc.items() if k != "name"}, folders, used)
        needs[name] = sorted(used - {name})
    order: list[str | None] = []

    def visit(name: str | None, path: tuple) -> None:
        if name in order:
            return
        if name in path:
            raise OtaMergeError(f"multi-merge file: merges read each other in a cycle: {' -> '.join(map(str, path))}"
                                f" -> {name}")
        for dep in needs[name]:
            visit(dep, (*path, name))
        order.append(name)

    for name in names:
        visit(name, ())
    return [Step(n, configs[n], folders[n] if n is not None else str(out_path)) for n in order]


def has_model(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in WEIGHTS)


def run_documents(config_path: str | Path, intermediate_dir: str | Path, out_path: str | Path | None = None,
                  opts=None, lazy: bool = True) -> list[Step]:
    """Run every merge of a multi-merge file in dependency order; returns the steps."""
    from otamerge.merge import MergeOptions, merge_raw

    try:
        text = Path(config_path).read_text()
    except OSError as exc:
        raise OtaMergeError(f"cannot read multi-merge file {config_path}: {exc.strerror}") from None
    steps = plan_documents(text, intermediate_dir, out_path)
    for step in steps:
        label = f"{config_path} ({step.name or 'final merge'})"
        if lazy and has_model(step.out):
            print(f"{label}: {step.out} already holds a model, not merged again")
            continue
        merge_raw(step.config, label, step.out, opts or MergeOptions())
    return steps
