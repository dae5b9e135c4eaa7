"""The one module that says where the workflow's files live (otamerge.workflow.layout), the seeds
a config runs, and that the DAG-building modules stay free of torch."""

import subprocess
import sys

import pytest

from otamerge.workflow import layout
from otamerge.workflow.seeds import config_seeds


def test_one_function_gives_both_the_rule_pattern_and_the_path():
    assert layout.graft_dir("{seed}", "{expert}", "{metric}", "{density}") == \
        "results/seed{seed}/ffg/{expert}/{metric}/{density}"
    assert layout.graft_dir(2, "add", "fisher", "0.1") == "results/seed2/ffg/add/fisher/0.1"
    assert layout.scores(0, "builtin", "merge/ota_ffg.add-rev") == \
        "results/seed0/evaluation/builtin/merge/ota_ffg.add-rev.json"
    assert layout.raw_scores(1, "olmes", "base") == "results/seed1/evaluation/olmes_raw/base"
    assert layout.merged_model(3, "ties") == "results/seed3/merges/ties/model"
    assert layout.merge_thresholds(3, "ties") == "results/seed3/merges/ties/thresholds.csv"
    assert layout.merge_config(3, "ties") == "results/seed3/merges/ties/merge_config.yml"
    assert layout.demo_base("resources/demo", 1) == "resources/demo/seed1/base"
    assert layout.demo_expert("resources/demo", 1, "add") == "resources/demo/seed1/experts/add"
    assert layout.demo_text("resources/demo", 1, "heldout") == "resources/demo/seed1/text/heldout.txt"
    assert layout.importance_file(0) == "results/seed0/importance/sparsegpt.safetensors"
    assert layout.hessians_dir(0) == "results/seed0/importance/hessians"
    assert layout.rank1_moments(0, "add") == "results/seed0/moments/add/rank1.safetensors"
    assert layout.preconditioner("results/seed0/models/add") == "results/seed0/models/add/preconditioner.safetensors"
    assert layout.log("ffg", "{seed}", "{expert}/{metric}/{density}") == \
        "logs/ffg/seed{seed}/{expert}/{metric}/{density}.log"
    assert layout.log("summary", None, "summary") == "logs/summary/summary.log"
    assert layout.benchmark("merge", 4, "ties") == "results/benchmarks/merge/seed4/ties.tsv"
    assert layout.summary("retention.md") == "results/summary/retention.md"
    assert layout.plot("methods") == "results/plots/methods.png"


@pytest.mark.parametrize("model,folder", [
    ("base", "results/seed5/models/base"),
    ("add", "results/seed5/models/add"),
    ("ffg/add/fisher/0.2", "results/seed5/ffg/add/fisher/0.2"),
    ("merge/ota_ffg.add-rev", "results/seed5/merges/ota_ffg.add-rev/model"),
])
def test_a_models_table_name_gives_its_folder(model, folder):
    assert layout.model_folder(5, model) == folder
    assert layout.model_folder("{seed}", model) == folder.replace("seed5", "seed{seed}")


def test_table_names_of_grafts_and_merges():
    assert layout.graft_name("add", "fisher", "0.1") == "ffg/add/fisher/0.1"
    assert layout.merge_name("ota_ffg.add-rev") == "merge/ota_ffg.add-rev"
    # a graft's folder, from its table name or its parts, and its expert back from the name
    name = layout.graft_name("add", "fisher", "0.1")
    assert layout.model_folder(0, name) == layout.graft_dir(0, "add", "fisher", "0.1")
    assert layout.is_graft(name) and layout.graft_expert(name) == "add" and not layout.is_graft("add")


def test_every_per_seed_result_gives_its_seed_back():
    for seed in (0, 7, 12):
        paths = [layout.scores(seed, "builtin", "ffg/add/fisher/0.1"), layout.merge_thresholds(seed, "seed3"),
                 layout.downloaded_model(seed, "seed9x"), layout.graft_dir(seed, "add", "fisher", "0.1"),
                 f"/work/results/seed5/wf/{layout.scores(seed, 'builtin', 'merge/seed2')}"]
        assert [layout.seed_of(p) for p in paths] == [seed] * len(paths)
    with pytest.raises(ValueError, match="not in a seed's results folder"):
        layout.seed_of("results/summary/scores.csv")


def test_a_configured_path_may_name_the_seed():
    assert layout.per_seed("resources/demo/seed{seed}/text/heldout.txt", 2) == "resources/demo/seed2/text/heldout.txt"
    assert layout.per_seed("/data/calibration.jsonl", 2) == "/data/calibration.jsonl"


@pytest.mark.parametrize("cfg,seeds", [({"seeds": [2, 0, 1]}, [2, 0, 1]), ({"seed": 4}, [4]), ({"seeds": [0]}, [0])])
def test_seeds_of_a_config(cfg, seeds):
    assert config_seeds(cfg) == seeds


@pytest.mark.parametrize("cfg,message", [
    ({"seed": 1, "seeds": [0]}, r"sets both seed \(1\) and seeds \(\[0\]\): give one"),
    ({}, "needs seeds"),
    ({"seeds": []}, "at least one"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"seeds": [-1]}, "non-negative"),
])
def test_bad_seeds_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        config_seeds(cfg)


def test_the_modules_the_dag_build_reads_import_no_torch():
    """The workflow imports these while building the DAG on the submitting node: they must
    stay light (no torch)."""
    code = ("import sys; import otamerge.workflow.layout, otamerge.workflow.seeds, otamerge.workflow.subsets, otamerge.ffg.densities, "
            "otamerge.workflow.merge_specs, otamerge.workflow.plan, otamerge.methods.catalog, otamerge.demo.settings; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
