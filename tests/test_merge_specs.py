"""Workflow merge specs -> merge configs, and config/paper.yaml against the paper's own configs."""

from pathlib import Path

import pytest
import yaml

from otamerge.config import parse_config
from otamerge.workflow.merge_specs import FFG_METRICS, merge_template, moments_kind
from otamerge.workflow.subsets import expand_merges

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config/paper.yaml").read_text())
PAPER["merges"].update(yaml.safe_load((REPO / "config/paper-fisher.yaml").read_text())["merges"])
# the expert folders tests/paper_configs maps the paper's hub ids and checkpoints onto
FOLDER = {"math": 0, "coding_tulu3": 1, "precise_if": 2, "general": 3, "knowledge": 4, "coding": 5}
# paper.yaml merge -> the paper's config it reproduces (config/README.md has the same table)
SOURCES = {
    "ota_ffg": "hf_ota_ffg_per_model_thresh", "ota_ffg_rank1": "hf_ota_ffg_rank1lemma",
    "ota_ffg_global": "hf_ota_ffg_global_thresh", "ota_ffg_linear": "hf_ota_ffg_linear_merge",
    "ota_ffg_rank4": "hf_ota_ffg_rank16", "ota": "hf_ota", "fisher_adam": "hf_ota_ffg",
    "ota_global_norm": "latest_llama_factory_ota", "linear": "latest_llama_factory_linear",
    "ties": "latest_llama_factory_ties", "dare_ties": "latest_llama_factory_dare",
    "breadcrumbs_ties": "latest_llama_factory_breadcrumbs_ties", "breadcrumbs": "latest_llama_factory_breadcrumbs",
    "multislerp": "latest_llama_factory_multislerp", "sce": "latest_llama_factory_sce",
    "ablation_linear": "ablation_coding_math_linear", "ablation_ota": "ablation_coding_math_ota",
    "ablation_ties": "ablation_coding_math_ties", "fisher": "hf_ota_ffg_fisher",
}


def _numbers(params: dict) -> dict:
    """YAML reads 1e-24 (no dot) as a string; compare the numbers they mean."""
    out = {}
    for k, v in params.items():
        try:
            out[k] = float(v) if not isinstance(v, bool) else v
        except (TypeError, ValueError):
            out[k] = v
    return out


def _rendered(name: str) -> dict:
    spec = PAPER["merges"][name]
    experts = {e: f"FAMILY/expert{FOLDER[e]}" for e in spec["experts"]}
    moments = {e: f"{f}/export/exp_avg_sq.safetensors" for e, f in experts.items()}
    return merge_template(spec, experts, "FAMILY/base", moments)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_paper_yaml_merge_is_the_papers_config_value_for_value(name):
    ours = _rendered(name)
    theirs = yaml.safe_load((REPO / "tests/paper_configs" / f"{SOURCES[name]}.yml").read_text())
    rank1 = PAPER["merges"][name].get("moments") == "rank1"
    assert ours["merge_method"] == theirs["merge_method"]
    assert ours.get("base_model") == theirs.get("base_model")
    assert ours["dtype"] == theirs["dtype"] and ours["tokenizer_source"] == theirs["tokenizer_source"]
    # the fork's breadcrumbs, which the paper's numbers come from, is an option here
    engine = {k: v for k, v in ours["parameters"].items() if k != "breadcrumbs_compat"}
    assert _numbers(engine) == _numbers(theirs.get("parameters") or {})

    def per_model(cfg: dict, drop: set[str]) -> dict:
        return {m["model"]: _numbers({k: v for k, v in (m.get("parameters") or {}).items() if k not in drop})
                for m in cfg["models"]}

    # paths differ by design: the workflow gives each expert its own moments file, rank-1
    # ones where the paper asks for rank1_approx (the same row-sum x column-sum estimate)
    drop = {"preconditioner_path"} | ({"rank1_approx"} if rank1 else set())
    assert per_model(ours, drop) == per_model(theirs, drop)
    assert [m["model"] for m in ours["models"]] == [m["model"] for m in theirs["models"]]
    assert len(parse_config(ours).models) == len(PAPER["merges"][name]["experts"])  # the engine takes it


def test_paper_yaml_sweeps_the_papers_ffg_graft_and_covers_every_merge_config():
    assert 0.3 in PAPER["ffg"]["densities"] and {"fisher", "magnitude"} <= set(PAPER["ffg"]["metrics"])
    assert "coding" in PAPER["models"]["experts"]
    covered = set(SOURCES.values()) | {"FFG__ffg_fisher_coding", "FFG__ffg_magnitude_coding"}
    assert covered == {p.stem for p in (REPO / "tests/paper_configs").glob("*.yml")}


def test_fixed_thresholds_and_expert_parameters_reach_each_model():
    spec = {"method": "ota", "thresholds": {"a": 2e-19}, "model_parameters": {"weight": 1.0},
            "expert_parameters": {"b": {"weight": 0.5}}, "tokenizer_source": "union"}
    cfg = merge_template(spec, {"a": "A", "b": "B"}, "BASE", {"a": "A/m", "b": "B/m"})
    assert cfg["models"] == [
        {"model": "A", "parameters": {"weight": 1.0, "precond_threshold": 2e-19, "preconditioner_path": "A/m"}},
        {"model": "B", "parameters": {"weight": 0.5, "preconditioner_path": "B/m"}}]
    assert cfg["tokenizer_source"] == "union" and cfg["base_model"] == "BASE"


@pytest.mark.parametrize("spec, message", [
    ({"method": "ota", "experts": ["a"], "thresholds": {"b": 1e-19}}, "merges.m.thresholds: b not among"),
    ({"method": "ties", "thresholds": {"a": 1e-19}}, "merges.m.thresholds: FFG masks OTA merges only, not ties"),
    ({"method": "ties", "expert_parameters": {"z": {"density": 0.3}}}, "merges.m.expert_parameters: z not among"),
])
def test_per_expert_values_for_experts_a_merge_lacks_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        expand_merges({"m": spec}, ["a", "b"])


@pytest.mark.parametrize("spec, message", [
    ({"method": "ties", "ffg": "fisher"}, r"merges.m.ffg: FFG masks OTA merges only, not ties"),
    # FFG's thresholds are of v t^2: without a base, OTA would compare them with v alone
    ({"method": "ota", "ffg": "fisher", "base": False}, r"merges.m: ffg needs the base"),
])
def test_ffg_where_it_cannot_mask_as_chosen_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        expand_merges({"m": spec}, ["a", "b"])


SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def test_every_catalogued_method_has_one_engine_function_and_the_schema_lists_the_catalog():
    """The catalog (torch-free) is the one declaration: the engine implements exactly its
    names, and the schema's method list and config/README.md follow its order."""
    from otamerge.methods.catalog import CATALOG
    from otamerge.methods.registry import IMPLEMENTATIONS

    merge = SCHEMA["properties"]["merges"]["additionalProperties"]["properties"]
    assert merge["method"]["enum"] == list(CATALOG) and set(IMPLEMENTATIONS) == set(CATALOG)
    for name, spec in CATALOG.items():
        # curvature is read where the method says: OTA always, the ranked TIES family by trim_by
        assert (spec.curvature == "trim_by") == ("trim_by" in {p.name for p in spec.params}), name
        assert spec.reads_moments({}, [{}]) == (spec.curvature == "always"), name
        assert spec.reads_moments({"trim_by": "fisher"}, [{"density": 0.5}]) == (spec.curvature != "never"), name
    documented = (REPO / "config/README.md").read_text().split("| `merges.<name>.method` | string | ", 1)[1]
    assert documented.split(" |", 1)[0] == ", ".join(CATALOG)
    assert SCHEMA["$defs"]["metric"]["enum"] == list(FFG_METRICS)
    assert set(merge["ffg"]["enum"]) == {m for m, (_, kind) in FFG_METRICS.items() if kind in ("full", "rank1")}


def test_ffg_fisher_rank1_alone_weighs_with_rank1_moments_and_a_disagreeing_moments_is_refused():
    assert moments_kind({"method": "ota", "ffg": "fisher_rank1"}) == "rank1"
    assert moments_kind({"method": "ota", "ffg": "fisher"}) == "full"
    assert moments_kind({"method": "ota"}) == "full"
    for ffg, moments in (("fisher_rank1", "full"), ("fisher", "rank1")):
        with pytest.raises(ValueError, match=f"merges.m: ffg {ffg} masks with .* moments but moments is {moments}"):
            expand_merges({"m": {"method": "ota", "ffg": ffg, "moments": moments}}, ["a", "b"])
