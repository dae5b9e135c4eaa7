"""The cross-key checks that stop a run before any job: keys the schema checks one by one
but that must agree with each other. Imports no torch or Snakemake (tests/test_plan.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

from otamerge.workflow.merge_specs import moments_kind

if TYPE_CHECKING:
    from otamerge.workflow.plan import Plan


def check_plan(plan: Plan, environ: Mapping[str, str] = os.environ) -> None:
    """Raise ValueError, naming the keys, where keys disagree: a chosen importance, backend
    or curvature source without its settings, an OLMES task's API key missing, a per-expert
    setting for an expert the run does not have."""
    cfg, ev = plan.config, plan.config["evaluation"]
    if "olmes" in plan.backends:
        for task, var in ev.get("olmes", {}).get("api_keys", {}).items():
            if task in plan.backend_tasks("olmes") and not environ.get(var):
                raise ValueError(f"evaluation task {task} needs the environment variable {var} (an API key)")
    uses_obs = "sparsegpt" in plan.metrics or any(moments_kind(s) == "sparsegpt" for s in plan.merges.values())
    if uses_obs and "sparsegpt" not in cfg:
        raise ValueError("ffg metric or trim_by sparsegpt needs a sparsegpt section "
                         "(calibration, samples, seqlen, damping)")
    # an expert without moments (e.g. a LoRA adapter) only where no job reads them
    needs = {e for e in plan.experts if {"fisher", "fisher_rank1"} & set(plan.metrics)}
    needs |= {e for m, s in plan.merges.items() if moments_kind(s) in ("full", "rank1")
              for e in plan.merge_experts(m)}
    lacking = sorted(e for e in needs if plan.outdir is None and e not in plan.fisher_experts
                     and not cfg["models"]["experts"][e].get("preconditioner"))
    if lacking:
        raise ValueError(f"experts {', '.join(lacking)} have no preconditioner, which the fisher FFG metric, "
                         "OTA and trim_by fisher read (use magnitude or sparsegpt for them, "
                         "or curvature source empirical_fisher)")
    if plan.fisher_needed and plan.outdir is None and "calibration" not in plan.curvature:
        raise ValueError("curvature source empirical_fisher needs curvature.calibration (text) for hub or "
                         "local experts")
    if plan.gram_needed and plan.outdir is None and "calibration" not in cfg["regmean"]:
        raise ValueError(f"RegMean merges read Gram matrices of experts {', '.join(plan.gram_needed)} on their own "
                         "text: give regmean.calibration (text, {expert} replaced) or each expert's gram_path")
    mode = cfg["thresholds"]["mode"]
    # per-expert settings for an expert the run does not have (a typo) would be read by no job
    for key, named in (("thresholds.fixed", cfg["thresholds"]["fixed"]),
                       ("curvature.experts", plan.curvature["experts"])):
        unknown = [e for e in named if e not in plan.experts]
        if unknown:
            raise ValueError(f"{key}: unknown expert {', '.join(unknown)} (experts: {', '.join(plan.experts)})")
    if mode == "merge" and not (plan.family and "builtin" in plan.backends):
        raise ValueError("thresholds.mode merge chooses on the builtin evaluator's validation prompts of a "
                         "family the workflow builds (demo or pretrained): add builtin to evaluation.backends")
    # merge mode: merges without a density sweep choose per expert, as auto
    auto = mode in ("auto", "merge") and any(s.get("ffg") for s in plan.merges.values())
    if auto and plan.threshold_backend not in plan.backends:
        raise ValueError(f"thresholds.backend {plan.threshold_backend} chooses the densities but is not in "
                         "evaluation.backends")
    if auto and plan.threshold_score is None:
        raise ValueError(f"thresholds.backend {plan.threshold_backend} needs thresholds.score: the metric of "
                         "its score rows that retention applies to (e.g. exact_match)")
    if "perplexity" in plan.backends and not plan.perplexity_texts:
        raise ValueError("evaluation backend perplexity needs evaluation.perplexity.texts")
    if mode == "fixed":  # every expert of every FFG merge has its density
        for m, spec in plan.merges.items():
            if spec.get("ffg"):
                plan.ffg_points(m)
