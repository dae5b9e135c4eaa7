from __future__ import annotations

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


def tiny_config(*overrides: str) -> dict:
    """.test/config-tiny.yaml (the demo shrunk to seconds), with the named overrides of
    .test/ (e.g. "olmes", "cluster") merged over it as Snakemake merges config files."""
    from snakemake.utils import update_config

    with open(REPO / ".test" / "config-tiny.yaml") as fh:
        cfg = yaml.safe_load(fh)
    for name in overrides:
        with open(REPO / ".test" / f"config-{name}.yaml") as fh:
            update_config(cfg, yaml.safe_load(fh))
    return cfg


def build_tiny(out: Path, cfg: dict) -> Path:
    return build_family(out, cfg["demo"], config_seeds(cfg)[0], threads=1)


def pytest_collection_modifyitems(items: list) -> None:
    """The long end-to-end runs first (a stable sort: the rest keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("demo"), tiny_config())
