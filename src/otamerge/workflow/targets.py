"""The run's final targets: what ``snakemake`` with no target builds. Imports no torch or
Snakemake (tests/test_plan.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
