"""The demo section of the workflow config, turned into training settings."""

from __future__ import annotations

from typing import Any

from otamerge.demo.train import TrainSettings

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
