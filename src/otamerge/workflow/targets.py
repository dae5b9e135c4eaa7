"""The run's final targets (what ``snakemake`` with no target builds) and what its report
jobs read: the plots' and the claims' models. Imports no torch or Snakemake (tests/test_plan.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otamerge.workflow import layout

if TYPE_CHECKING:
    from otamerge.workflow.plan import Plan

SUMMARY_TABLES = ["scores.csv", "accuracy.md", "accuracy.json"]
RETENTION_TABLES = ["retention.md", "retention.csv", "retention_by_size.csv", "retention_by_seed.csv"]


def final_output(plan: Plan) -> list[str]:
    """Every merged model of every seed with the thresholds it was made with and its
    card, every sweep point, the cross-seed summary tables of the configured backends,
    the pushed merges (config publish) and the LoRA adapters (config lora)."""
    seeds, merges = plan.seeds, plan.merges
    out = [f for s in seeds for m in merges for f in (layout.merged_model(s, m), layout.merge_thresholds(s, m))]
    out += [layout.model_folder(s, p) for s in seeds for p in plan.sweep_models()]
    if plan.backends:
        out += [layout.summary(t) for t in SUMMARY_TABLES]
        if merges:
            out += [layout.summary(t) for t in RETENTION_TABLES]
    out += [layout.model_card(s, m) for s in seeds for m in merges]
    out += [layout.published(s, m) for s, m in plan.published]
    out += [layout.lora_adapter(s, m) for s, m in plan.lora]
    if "builtin" in plan.backends:  # the sweep is scored by the builtin evaluator only
        out += [layout.summary("sweep.md"), layout.summary("thresholds.csv")]
        if plan.ffg_merges:  # the plots show the grafts the first FFG merge chose
            out += [layout.plot("methods")]
        if merges:
            out += [layout.summary("claims.md")]
        if plan.validated:
            out += [layout.summary("merge_choice.md")]
    return out


def plotted_models(plan: Plan) -> dict[str, dict[str, str]]:
    """The first seed's models the plots read, by name -> folder: the candidate grafts
    (where FFG keeps edits) and the experts (their curvature's overlap)."""
    seed = plan.seeds[0]
    return {"grafts": {g: layout.model_folder(seed, g) for g in plan.graft_candidates()},
            "experts": {e: layout.downloaded_model(seed, e) for e in plan.experts}}


def claims_files(plan: Plan) -> dict[int, dict[str, Any]]:
    """Per seed what the claims job reads: the base, each expert's moments, the candidate grafts."""
    grafts = plan.graft_candidates()
    return {s: {"base": layout.downloaded_model(s, "base"),
                "moments": {e: plan.moments_file(s, e) for e in plan.experts},
                "grafts": {g: layout.model_folder(s, g) for g in grafts}} for s in plan.seeds}


def claims_models(plan: Plan) -> list[str]:
    """The claims job's model inputs (folders and moments files), every seed."""
    grafts = plan.graft_candidates()
    return [f for s in plan.seeds for f in [layout.downloaded_model(s, "base"),
                                            *(plan.moments_input(s, e) for e in plan.experts),
                                            *(layout.model_folder(s, g) for g in grafts)]]
