"""The workflow's test configurations (.test/, the Snakemake catalog's convention) stay the
demo's config with only their own changes, so tests of them test the demo's code paths."""

import copy

import yaml

from conftest import REPO, default_config, tiny_config


def test_tiny_config_is_the_demo_shrunk_and_nothing_else():
    cfg = copy.deepcopy(default_config())
    demo = cfg["demo"]
    demo["n_eval"] = 20
    demo["arch"].update(hidden_size=32, intermediate_size=64, num_heads=2)
    demo["base"].update(steps=8, warmup=2, batch_size=16)
    demo["expert_defaults"].update(steps=4, warmup=1, batch_size=16)
    demo["experts"] = {"add": {"task": "add"}, "rev": {"task": "reverse", "steps": 6}}
    cfg["ffg"] = {"densities": [0.1, 0.5], "metrics": ["fisher"]}
    # two merges, without their density sweeps (tests that need one add it)
    cfg["merges"] = {k: {key: v for key, v in cfg["merges"][k].items() if key != "densities"} for k in ("ota_ffg", "ties")}
    cfg["evaluation"]["backends"] = ["builtin"]  # tests that need lm_eval add it
    assert tiny_config() == cfg


def test_overrides_change_only_their_keys():
    tiny = tiny_config()
    olmes, cluster = tiny_config("olmes"), tiny_config("cluster")
    assert olmes["evaluation"]["backends"] == ["olmes"] and olmes["thresholds"]["fixed"] == {"add": 0.5, "rev": 0.1}
    assert olmes["merges"] == tiny["merges"] and olmes["demo"] == tiny["demo"]
    assert cluster["resources"] == {"model_params_b": 2.0, "gpu": 1} and cluster["demo"]["threads"] == 1
    assert {k: v for k, v in cluster.items() if k not in ("resources", "demo")} == {
        k: v for k, v in tiny.items() if k not in ("resources", "demo")}
    for name in ("tiny", "olmes", "cluster"):  # each file says how to run it
        assert "snakemake --configfile .test/config-tiny.yaml" in (REPO / f".test/config-{name}.yaml").read_text()
    assert yaml.safe_load((REPO / ".test/config-olmes.yaml").read_text())["evaluation"]["olmes"]["executable"] == \
        "tests/fake_olmes/olmes"
