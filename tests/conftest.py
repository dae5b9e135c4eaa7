from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from otamerge.demo.build import build_family
from otamerge.workflow.seeds import config_seeds

REPO = Path(__file__).resolve().parents[1]

# Never reach a hub from the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def default_config() -> dict:
    with open(REPO / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def tiny_config() -> dict:
    """The demo config shrunk to seconds: same code paths, far fewer steps."""
    cfg = copy.deepcopy(default_config())
    demo = cfg["demo"]
    demo["n_eval"] = 20
    demo["arch"].update(hidden_size=32, intermediate_size=64, num_heads=2)
    demo["base"].update(steps=8, warmup=2, batch_size=16)
    demo["expert_defaults"].update(steps=4, warmup=1, batch_size=16)
    demo["experts"] = {"add": {"task": "add"}, "rev": {"task": "reverse", "steps": 6}}
    cfg["ffg"] = {"densities": [0.1, 0.5], "metrics": ["fisher"]}
    cfg["merges"] = {k: cfg["merges"][k] for k in ("ota_ffg", "ties")}
    cfg["evaluation"]["backends"] = ["builtin"]  # tests that need lm_eval add it
    return cfg


def build_tiny(out: Path, cfg: dict) -> Path:
    return build_family(out, cfg["demo"], config_seeds(cfg)[0], threads=1)


def pytest_collection_modifyitems(items: list) -> None:
    """The long end-to-end runs first (a stable sort: the rest keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("demo"), tiny_config())
