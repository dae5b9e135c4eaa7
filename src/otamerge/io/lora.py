"""Experts given as PEFT LoRA adapters, read as the dense models they stand for.

An adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) holds, per
target module M, ``base_model.model.M.lora_A.weight`` (r x in) and ``lora_B.weight``
(out x r); the expert's weight is

    W = W_base + scale * B A        (transposed where fan_in_fan_out: W is stored in x out)
    scale = alpha / r               (alpha / sqrt(r) with use_rslora; r and alpha per
                                     module from rank_pattern and alpha_pattern)

A ``lora_B.bias`` (``lora_bias``) adds ``scale * lora_B.bias`` to the module's bias; any
other tensor of the adapter (``modules_to_save``, trained biases) replaces the base's
tensor of that name. Nothing dense is materialised: each tensor (or row chunk) is formed
when the merge or FFG asks for it, so the engine's memory bound holds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from otamerge.io.checkpoint import Checkpoint
from otamerge.errors import OtaMergeError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches the module name or its tail."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraExpert:
    """A LoRA adapter over ``base``, with the read interface of a Checkpoint."""

    def __init__(self, folder: str | Path, base: Checkpoint, label: str):
        self.path = Path(folder)
        self.label = label
        self.base = base
        try:
            cfg = json.loads((self.path / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise OtaMergeError(f"{label}: cannot read {self.path / ADAPTER_CONFIG} ({exc})") from None
        if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
            kind = "DoRA" if cfg.get("use_dora") else cfg.get("peft_type")
            raise OtaMergeError(f"{label}: {kind} adapters are not supported, only LoRA")
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        self.adapter = Checkpoint(self.path / ADAPTER_WEIGHTS, label)
        self.delta: dict[str, tuple[str, str, float]] = {}   # weight name -> (A key, B key, scale)
        self.replaced: dict[str, str] = {}                   # tensor name -> adapter key
        self.bias: dict[str, tuple[str, float]] = {}         # bias name -> (lora_B.bias key, scale)
        for key in self.adapter.names():
            if not key.startswith(PREFIX):
                raise OtaMergeError(f"{label}: adapter tensor {key} does not start with {PREFIX}")
            name = key[len(PREFIX):]
            if name.endswith(".lora_A.weight"):
                module = name[: -len(".lora_A.weight")]
                self.delta[f"{module}.weight"] = (key, f"{PREFIX}{module}.lora_B.weight", self._scale(cfg, module))
            elif name.endswith(".lora_B.bias"):
                module = name[: -len(".lora_B.bias")]
                self.bias[f"{module}.bias"] = (key, self._scale(cfg, module))
            elif not name.endswith(".lora_B.weight"):
                self.replaced[name] = key
        self._check()

    @staticmethod
    def _scale(cfg: dict, module: str) -> float:
        r = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    def _check(self) -> None:
        for name, (a, b, _) in self.delta.items():
            if name not in self.base:
                raise OtaMergeError(f"{self.label}: adapter targets {name}, which the base model does not have")
            if b not in self.adapter:
                raise OtaMergeError(f"{self.label}: {a} has no matching {b} in {self.adapter.file_of(a)}")
            (r, n_in), (n_out, r_b) = self.adapter.shape(a), self.adapter.shape(b)
            want = (n_in, n_out) if self.fan_in_fan_out else (n_out, n_in)
            if r != r_b or self.base.shape(name) != want:
                raise OtaMergeError(f"{self.label}: LoRA factors of {name} have shapes {[r, n_in]} and "
                                    f"{[n_out, r_b]}, the base weight {list(self.base.shape(name))}")
        for name, key in [*self.replaced.items(), *((n, k) for n, (k, _) in self.bias.items())]:
            if name not in self.base or self.adapter.shape(key) != self.base.shape(name):
                raise OtaMergeError(f"{self.label}: adapter tensor {key} matches no base tensor of its shape")

    # the Checkpoint interface the merge and FFG use
    def names(self) -> list[str]:
        return self.base.names()

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.base.dtype(name)

    def file_of(self, name: str) -> Path:
        if name in self.delta:
            return self.adapter.file_of(self.delta[name][0])
        if name in self.replaced:
            return self.adapter.file_of(self.replaced[name])
        if name in self.bias:
            return self.adapter.file_of(self.bias[name][0])
        return self.base.file_of(name)

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        if name in self.replaced:
            return self.adapter.get(self.replaced[name], rows).to(self.dtype(name))
        w = self.base.get(name, rows)
        if name in self.bias:
            key, scale = self.bias[name]
            return (w.float() + self.adapter.get(key, rows).float() * scale).to(w.dtype)
        if name not in self.delta:
            return w
        a_key, b_key, scale = self.delta[name]
        a, b = self.adapter.get(a_key).float(), self.adapter.get(b_key).float()
        # rows of the left factor, so that a row chunk has the bits of the whole tensor's rows
        # fan_in_fan_out: W = (B A)^T. Contiguous factors: a transposed view sends the whole
        # tensor and a row chunk to different BLAS kernels, whose sums differ in the last bit
        left, right = (a.T.contiguous(), b.T.contiguous()) if self.fan_in_fan_out else (b, a)
        delta = (left if rows is None else left[rows[0]:rows[1]]) @ right
        return (w.float() + delta * scale).to(w.dtype)

    def prefetch(self, name: str) -> None:
        self.base.prefetch(name)

    def close(self) -> None:
        self.adapter.close()  # the base belongs to whoever opened it


def open_model(folder: str | Path, label: str, base: Checkpoint | None) -> Checkpoint | LoraExpert:
    """A model folder, or a LoRA adapter folder read over ``base``."""
    if not is_adapter(folder):
        return Checkpoint(folder, label)
    if base is None:
        raise OtaMergeError(f"{label}: a LoRA adapter needs the base model it was trained from (set base_model)")
    return LoraExpert(folder, base, label)
