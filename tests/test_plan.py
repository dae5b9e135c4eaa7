"""The workflow's decisions (otamerge.workflow.plan) straight from configs, without
Snakemake: what a run holds, where inputs come from, what a merge's thresholds read, and
each cross-key check's error."""

from __future__ import annotations

import copy

import pytest
from snakemake.utils import validate

from conftest import REPO, default_config
from otamerge.workflow import layout
from otamerge.workflow.plan import Plan
from otamerge.workflow.targets import final_output

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def plan(cfg: dict, environ=None) -> Plan:
    cfg = copy.deepcopy(cfg)
    validate(cfg, SCHEMA)  # as common.smk does: the schema's defaults filled in
    return Plan(cfg, {} if environ is None else environ)


def hub_config(**experts) -> dict:
    """The default merges over two hub experts instead of the demo."""
    cfg = default_config()
    cfg["demo"] = None
    cfg["models"] = {"base": {"source": "org/base"},
                     "experts": experts or {e: {"source": f"org/{e}-s{{seed}}", "preconditioner": "m/{seed}.st",
                                                "task": e} for e in ("add", "sort")}}
    cfg["merges"] = {"ota_ffg": cfg["merges"]["ota_ffg"], "linear": cfg["merges"]["linear"]}
    cfg["evaluation"]["backends"] = []
    cfg["thresholds"] = {"mode": "fixed", "fixed": {"add": 0.1, "sort": 0.05}}
    return cfg


def test_the_default_run():
    p = plan(default_config())
    assert p.family == "tiny" and p.seeds == [0] and p.models == ["base", "add", "reverse", "sort", "shift", "facts"]
    assert p.densities == ["0.02", "0.05", "0.1"]
    # density sweep points are merges of their own, kept out of the merges the plots read
    assert {"ota_ffg@0.02", "ties@0.1"} <= set(p.merges) and p.sweep_points["ota_ffg"]["0.05"] == "ota_ffg@0.05"
    assert "ota_ffg" in p.ffg_merges and not any("@" in m for m in p.ffg_merges)
    assert p.fisher_needed == sorted(p.experts)  # merge fisher weighs with every expert's empirical Fisher
    assert p.size_b == 0.0003 and p.gpus == 0 and p.bias_correction is False  # schema defaults where unset
    out = final_output(p)
    assert layout.summary("claims.md") in out and layout.summary("merge_choice.md") in out
    assert layout.merged_model(0, "ota_ffg@0.1") in out and len(out) == len(set(out))


def test_sources_and_moments():
    p = plan(default_config())
    assert p.source("base", 3) == {"source": layout.demo_base("resources/demo", 3)}
    assert p.source("add", 3)["preconditioner"] == "export/exp_avg_sq.safetensors"
    # downloaded moments live inside the expert's folder: the folder is what a job depends on
    assert p.moments_file(0, "add") == layout.preconditioner(layout.downloaded_model(0, "add"))
    assert p.moments_input(0, "add") == layout.downloaded_model(0, "add")
    assert p.moments_input(0, "add", "rank1") == layout.rank1_moments(0, "add")
    assert p.moments_file(0, "add", "empirical_fisher") == layout.fisher_moments(0, "add")
    assert p.moments_file(0, "add", "sparsegpt") == p.moments_file(0, "sort", "sparsegpt") == layout.importance_file(0)
    cfg = default_config()
    cfg["moments"] = {"bias_correction": True}
    assert plan(cfg).moments_file(0, "add") == layout.corrected_moments(0, "add")
    hub = plan(hub_config())
    assert hub.source("sort", 2) == {"source": "org/sort-s2", "preconditioner": "m/2.st", "task": "sort"}
    assert hub.optimizer_override("add") == {}


def test_what_a_merges_thresholds_read():
    p = plan(default_config())
    experts = p.merge_experts("ota_ffg")
    auto = p.merge_config_inputs(0, "ota_ffg")
    # mode auto: every expert at every swept density, and the scores that choose among them
    assert len(auto["sweeps"]) == len(auto["scores"]) - len(experts) == len(experts) * len(p.densities)
    assert auto["moments"] == [layout.downloaded_model(0, e) for e in experts]
    point = p.merge_config_params(0, "ota_ffg@0.05")["thresholds"]
    assert point["fixed"] == {e: "0.05" for e in experts}
    assert point["points"] == [{"expert": e, "density": "0.05", "graft": layout.graft_dir(0, e, "fisher", "0.05")}
                               for e in experts]
    assert p.merge_config_inputs(0, "ota_ffg@0.05")["scores"] == []  # nothing left to choose
    cfg = default_config()
    cfg["thresholds"]["mode"] = "merge"
    by_merge = plan(cfg)
    assert by_merge.chooses_by_merge("ota_ffg") and by_merge.fixed_density("add", "ota_ffg") is None
    inputs = by_merge.merge_config_inputs(0, "ota_ffg")
    assert "scores" not in inputs and inputs["validation"] == by_merge.validation_scores(0, "ota_ffg")
    assert by_merge.merge_config_params(0, "ota_ffg")["thresholds"]["by_merge"] == by_merge.sweep_points["ota_ffg"]


def test_sweep_points_are_scored_on_their_own_task_where_asked():
    cfg = default_config()
    cfg["evaluation"]["sweep_tasks"] = "own"
    p = plan(cfg)
    assert p.model_tasks("builtin", layout.graft_name("sort", "fisher", "0.1")) == ["sort"]
    assert p.model_tasks("builtin", "sort") == cfg["evaluation"]["tasks"]


def _without_sparsegpt(cfg):
    cfg.pop("sparsegpt")
    return cfg


@pytest.mark.parametrize("change,message", [
    (_without_sparsegpt, "needs a sparsegpt section"),
    (lambda c: c["thresholds"].update(mode="merge") or c["evaluation"].update(backends=["perplexity"]) or c,
     "thresholds.mode merge chooses on the builtin evaluator"),
    (lambda c: c["thresholds"].update(backend="olmes") or c, "thresholds.backend olmes chooses the densities"),
    (lambda c: c["thresholds"].update(backend="lm_eval") or c["thresholds"].pop("score") and c,
     "thresholds.backend lm_eval needs thresholds.score"),
    (lambda c: c["evaluation"]["backends"].append("perplexity") or c["evaluation"].pop("perplexity") and c,
     "needs evaluation.perplexity.texts"),
    (lambda c: c["thresholds"].update(mode="fixed", fixed={"add": 0.1}) or c,
     "thresholds.mode is fixed but thresholds.fixed has no density for reverse"),
    # a typo in a per-expert key would be read by no job
    (lambda c: c["thresholds"]["fixed"].update(ad=0.1) or c, r"thresholds.fixed: unknown expert ad \(experts: add, "),
    (lambda c: c["curvature"].update(experts={"ad": "empirical_fisher"}) or c, "curvature.experts: unknown expert ad"),
])
def test_keys_that_disagree_stop_the_run(change, message):
    with pytest.raises(ValueError, match=message):
        plan(change(default_config()))


def test_hub_experts_need_their_curvature():
    no_moments = {"add": {"source": "org/add", "task": "add"}, "sort": {"source": "org/sort", "task": "sort"}}
    with pytest.raises(ValueError, match="experts add, sort have no preconditioner"):
        plan(hub_config(**no_moments))
    cfg = hub_config(**no_moments)
    cfg["curvature"] = {"source": "empirical_fisher"}
    with pytest.raises(ValueError, match="needs curvature.calibration"):
        plan(cfg)
    cfg["curvature"]["calibration"] = "text/{expert}-{seed}.txt"
    p = plan(cfg)
    assert p.fisher_experts == ["add", "sort"] and p.fisher_calibration(4, "sort") == "text/sort-4.txt"


def test_an_olmes_task_that_needs_a_key_stops_the_run_without_it():
    cfg = default_config()
    cfg["evaluation"]["backends"].append("olmes")
    cfg["evaluation"]["olmes"] = {"tasks": ["alpaca_eval_v2::tulu"], "api_keys": {"alpaca_eval_v2::tulu": "OPENAI_API_KEY"}}
    with pytest.raises(ValueError, match="needs the environment variable OPENAI_API_KEY"):
        plan(cfg)
    assert plan(cfg, {"OPENAI_API_KEY": "k"}).backend_tasks("olmes") == ["alpaca_eval_v2::tulu"]


def test_regmean_merges_read_each_experts_gram_matrices_on_its_own_text():
    cfg = default_config()
    cfg["merges"]["regmean"] = {"method": "regmean", "expert_parameters": {"sort": {"gram_path": "mine/sort"}}}
    p = plan(cfg)
    others = [e for e in p.experts if e != "sort"]
    assert p.gram_needed == sorted(others)  # the one given its own gram_path is not computed
    params = p.merge_config_params(1, "regmean")
    assert params["grams"] == {e: layout.gram_dir(1, e) for e in others}
    assert p.merge_config_inputs(1, "regmean")["grams"] == [layout.gram_dir(1, e) for e in others]
    assert p.gram_text(1, "add") == layout.expert_text("resources/demo", 1, "add")
    assert "grams" not in p.merge_config_params(1, "linear")  # other merges' params unchanged
    hub = hub_config()
    hub["merges"]["regmean"] = {"method": "regmean"}
    with pytest.raises(ValueError, match="Gram matrices of experts add, sort .* give regmean.calibration"):
        plan(hub)
    hub["regmean"] = {"calibration": "text/{expert}-{seed}.txt"}
    assert plan(hub).gram_text(2, "sort") == "text/sort-2.txt"
    hub["merges"]["regmean"]["model_parameters"] = {"gram_path": "shared"}
    assert plan(hub).gram_needed == []


def test_the_models_scored_on_validation_prompts():
    # the demo: base, 5 experts and the 4 swept merges' 3 points each, once; each is scored on
    # test prompts in the same job (rule evaluate_validation), and its scores are what the
    # merge-level density choice reads
    p = plan(default_config())
    models = p.validation_models()
    points = [layout.merge_name(f"{m}@{d}") for m in ("ota_ffg", "ota_ffg_rank1", "ota_ffg_linear", "ties")
              for d in ("0.02", "0.05", "0.1")]
    assert models[:6] == ["base", "add", "reverse", "sort", "shift", "facts"]
    assert sorted(models[6:]) == sorted(points) and len(models) == 18
    assert p.validation_scores(0, "ties") == [layout.scores(0, "validation", m)
                                              for m in models[:6] + [layout.merge_name(f"ties@{d}")
                                                                     for d in ("0.02", "0.05", "0.1")]]
    # hub experts: no builtin evaluator, so no validation prompts either
    assert plan(hub_config()).validation_models() == []
