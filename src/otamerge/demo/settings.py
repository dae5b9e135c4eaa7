"""The demo section of the workflow config, turned into training settings.

Imports no torch: the workflow reads it while building the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    batch_size: int = 64
    warmup: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    replay_fraction: float = 0.0


_FIELDS = set(TrainSettings.__dataclass_fields__)


def train_settings(values: dict[str, Any]) -> TrainSettings:
    """TrainSettings from a config mapping (keys that are not settings are ignored)."""
    kw = {k: v for k, v in values.items() if k in _FIELDS}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return TrainSettings(**kw)


def expert_config(demo: dict[str, Any], expert: str) -> dict[str, Any]:
    """An expert's training settings: ``expert_defaults`` overridden by its own keys."""
    merged = {**demo.get("expert_defaults", {}), **demo["experts"][expert]}
    return {k: v for k, v in merged.items() if k != "task"}


def base_data(demo: dict[str, Any]) -> dict[str, Any]:
    """How the base's training data is drawn (the experts replay the same data), as
    keyword arguments of ``build_base`` and ``build_expert``: the full tasks (default) or
    their restricted versions, with a share ``alternative`` of answers by each task's
    other convention."""
    base = demo.get("base", {})
    return {"restricted": base.get("data", "full") == "restricted", "alternative": base.get("alternative", 0.0)}
