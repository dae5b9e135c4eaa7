import math
import os
import re

from snakemake.utils import validate

from otamerge.workflow import layout
from otamerge.demo.settings import base_data, expert_config
from otamerge.ffg.densities import density_label
from otamerge.workflow.claims import CLAIM_MERGES as DEFAULT_CLAIM_MERGES
from otamerge.workflow.merge_specs import FFG_METRICS
from otamerge.workflow.merge_specs import moments_kind as merge_moments_kind
from otamerge.workflow.publish import lora_merges, publish_repos
from otamerge.workflow.seeds import config_seeds
from otamerge.workflow.subsets import ALL, expand_merges, sweep_points


validate(config, schema="../schemas/config.schema.yaml")

# every seed runs the whole family; each job's path and params hold only its own seed
SEEDS = config_seeds(config)
# The models the workflow builds itself, then "downloads" from disk: the tiny demo
# (FAMILY tiny) or experts fine-tuned from a real pretrained base (FAMILY pretrained,
# config/smollm2.yaml); without either, config.models names hub repos or local folders.
FAMILY = "tiny" if config.get("demo") else "pretrained" if config.get("pretrained") else None
BUILD = config[{"tiny": "demo", "pretrained": "pretrained"}[FAMILY]] if FAMILY else None
DEMO = BUILD["outdir"] if BUILD else None
N_EVAL = BUILD["n_eval"] if BUILD else 100  # held-out prompts per task of the built family
if BUILD:  # an expert set to null is dropped (a config merged over another can remove one)
    BUILD["experts"] = {e: spec for e, spec in BUILD["experts"].items() if spec is not None}
    TASK = {e: spec["task"] for e, spec in BUILD["experts"].items()}
else:
    TASK = {e: spec.get("task") for e, spec in config["models"]["experts"].items()}
EXPERTS = list(TASK)
MODELS = ["base", *EXPERTS]
# one spelling per sweep point: 0.1 and 0.10 are one job
DENSITIES = sorted({density_label(d) for d in config["ffg"]["densities"]}, key=float)
METRICS = config["ffg"]["metrics"]
# the configured merges (a merge set to null is dropped: a config merged over another can
# remove one), then those of subsets of the experts; MERGE_INFO says which experts each holds
MERGES, MERGE_INFO = expand_merges({m: s for m, s in config["merges"].items() if s is not None}, EXPERTS,
                                   config.get("subsets"), DENSITIES)
BACKENDS = config["evaluation"]["backends"]
# the points of each merge's density sweep, {merge: {density: point's merge name}}, and
# whether the builtin evaluator scores them on validation prompts (disjoint from the test
# prompts) for the density a merge chooses itself (report, and thresholds.mode: merge)
SWEEP_POINTS = sweep_points(MERGE_INFO)
VALIDATED = bool(SWEEP_POINTS) and FAMILY is not None and "builtin" in BACKENDS
# the backend and metric whose own-task scores choose automatic FFG densities
THRESHOLD_BACKEND = config["thresholds"].get("backend", "builtin")
THRESHOLD_SCORE = config["thresholds"].get("score", "token_accuracy" if THRESHOLD_BACKEND == "builtin" else None)
# job sizes: the model's size in billions of parameters, and GPUs per GPU job
SIZE_B = config.get("resources", {}).get("model_params_b", 1.0)
GPUS = config.get("resources", {}).get("gpu", 0)
# Adam's exp_avg_sq divided by 1 - beta2^t before any job reads it (off: the paper's raw moments)
BIAS_CORRECTION = config.get("moments", {}).get("bias_correction", False)


def alternatives(names):
    """A wildcard constraint matching exactly these names (merge names hold dots)."""
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    seed=r"\d+",
    expert=alternatives(EXPERTS),
    name=alternatives(MODELS),
    backend=alternatives(BACKENDS) or "builtin",
    metric=alternatives(FFG_METRICS),
    density=r"[0-9][0-9.e-]*",
    merge=alternatives(MERGES) or "NO_MERGE",
    model=r"base|{}|ffg/[^/]+/[^/]+/[^/]+|merge/[^/]+".format(alternatives(EXPERTS)),


PERPLEXITY_TEXTS = config["evaluation"].get("perplexity", {}).get("texts", {})
# the merged models pushed to the hub with their cards: {(seed, merge): repo id}
PUBLISHED = publish_repos(config.get("publish"), list(MERGES), SEEDS)
LORA = lora_merges(config.get("lora"), list(MERGES), SEEDS)


def scaled(fixed, per_b):
    """A resource (mem_mb, or runtime in minutes) of ``fixed + per_b`` per billion
    parameters, multiplied by the attempt so that a retried job asks for more.

    The rules' numbers are what each job holds or reads per billion parameters, with a
    margin (benchmarks/memory.py measures the streaming jobs); on a cluster, override
    them per job type with ``--set-resources merge:mem_mb=64000``."""
    return lambda wildcards, attempt: math.ceil((fixed + per_b * SIZE_B) * attempt)


def source(name, seed):
    """Where model ``name`` of a seed comes from: the demo's build for that seed, or the
    configured hub repo or local folder (``{seed}`` in its paths replaced by the seed)."""
    if DEMO:
        if name == "base":  # a pretrained base is converted once, for every seed
            return {"source": layout.converted_base(DEMO) if FAMILY == "pretrained" else layout.demo_base(DEMO, seed)}
        return {"source": layout.demo_expert(DEMO, seed, name), "preconditioner": "export/exp_avg_sq.safetensors"}
    spec = config["models"]["base"] if name == "base" else config["models"]["experts"][name]
    return {k: layout.per_seed(v, seed) if k in ("source", "preconditioner") else v for k, v in spec.items()}


# where each expert's curvature comes from: its optimizer's exp_avg_sq (adam, default) or
# an empirical Fisher estimated here (curvature.source, per expert curvature.experts)
CURVATURE = config.get("curvature", {})
FISHER_EXPERTS = [e for e in EXPERTS if CURVATURE.get("experts", {}).get(e, CURVATURE.get("source", "adam"))
                  == "empirical_fisher"]
# experts whose empirical Fisher some job reads: those above, and the experts of merges that
# weigh with it (merges.<name>.moments: empirical_fisher, the paper's Fisher merging)
FISHER_NEEDED = sorted(set(FISHER_EXPERTS) | {e for m, spec in MERGES.items()
                                              if merge_moments_kind(spec) == "empirical_fisher"
                                              for e in MERGE_INFO[m].experts})


def moments_file(seed, expert, kind="full"):
    """The expert's exp_avg_sq as downloaded or bias-corrected (or its empirical Fisher,
    never bias-corrected), its rank-1 compression, or the base's OBS importance (the same
    file for every expert of a seed)."""
    if kind == "sparsegpt":
        return layout.importance_file(seed)
    if kind == "rank1":
        return layout.rank1_moments(seed, expert)
    if kind == "empirical_fisher" or expert in FISHER_EXPERTS:
        return layout.fisher_moments(seed, expert)
    if BIAS_CORRECTION:
        return layout.corrected_moments(seed, expert)
    return downloaded_moments(seed, expert)


def downloaded_moments(seed, expert):
    return layout.preconditioner(layout.model_dir(seed, expert))


def moments_input(seed, expert, kind="full"):
    """What a job reading those moments depends on: downloaded moments live inside the
    expert's folder (a directory output), so the folder is the input."""
    path = moments_file(seed, expert, kind)
    return layout.model_dir(seed, expert) if path == downloaded_moments(seed, expert) else path


def optimizer_override(expert):
    """Adam's step count and beta2 for bias correction where the moments' metadata lacks them."""
    return {} if DEMO else config["models"]["experts"][expert].get("optimizer", {})


def fisher_calibration(seed, expert):
    """An expert's calibration text ({seed} and {expert} replaced), or None: the demo's
    experts default to their own task's examples."""
    path = CURVATURE.get("calibration")
    return layout.per_seed(path, seed).replace("{expert}", expert) if path else None


def download_input(wildcards):
    """A source the demo builds is an output of the demo rules; hub sources have no input."""
    return [source(wildcards.name, wildcards.seed)["source"]] if DEMO else []


def model_input(wildcards):
    """Folder of a model of a seed by its name in the score tables."""
    return layout.model_folder(wildcards.seed, wildcards.model)


def expert_settings(wildcards):
    """Only what this expert depends on, so editing one expert reruns only its job."""
    return expert_config(BUILD, wildcards.expert)


def ffg_moments_kind(metric):
    return FFG_METRICS[metric][1]


def merge_experts(merge):
    return list(MERGE_INFO[merge].experts)


def chooses_by_merge(merge):
    """Whether a merge takes the density its own sweep's merged models keep most with on
    validation prompts (thresholds.mode: merge, a merge with a density sweep)."""
    return config["thresholds"]["mode"] == "merge" and merge in SWEEP_POINTS


def validation_scores(seed, merge):
    """Validation score files the merge-level choice reads: base, experts, the sweep's points."""
    models = MODELS + [layout.merge_name(p) for p in SWEEP_POINTS[merge].values()]
    return [layout.scores(seed, "validation", m) for m in models]


def fixed_density(expert, merge=None):
    """An expert's density in a merge: the merge's own (a point of its density sweep),
    the configured one, or None where it is chosen (per expert, or by the merge)."""
    if merge and MERGE_INFO[merge].density:
        return MERGE_INFO[merge].density
    if merge and chooses_by_merge(merge):
        return None
    fixed = config["thresholds"].get("fixed", {})
    if expert in fixed:
        return density_label(fixed[expert])
    if config["thresholds"]["mode"] == "fixed":
        raise ValueError(f"thresholds.mode is fixed but thresholds.fixed has no density for {expert}")
    return None


def candidate_densities(expert, merge=None):
    """The sweep points an expert's FFG threshold in a merge may come from: its fixed
    density, or every swept density when it is chosen automatically."""
    d = fixed_density(expert, merge)
    return [d] if d else DENSITIES


def ffg_points(merge):
    """(expert, density) of every candidate graft of a merge using FFG."""
    return [(e, d) for e in merge_experts(merge) for d in candidate_densities(e, merge)]


def merge_config_inputs(wildcards):
    """Experts and moments; with FFG, the sweep points the thresholds are read from."""
    seed, spec = wildcards.seed, MERGES[wildcards.merge]
    experts = merge_experts(wildcards.merge)
    inputs = {"experts": [layout.model_dir(seed, e) for e in experts], "base": layout.model_dir(seed, "base")}
    kind = merge_moments_kind(spec)
    if kind:
        inputs["moments"] = [moments_input(seed, e, kind) for e in experts]
    if spec.get("ffg") and chooses_by_merge(wildcards.merge):
        inputs["sweeps"] = [layout.graft_dir(seed, e, spec["ffg"], d) for e, d in ffg_points(wildcards.merge)]
        inputs["validation"] = validation_scores(seed, wildcards.merge)
    elif spec.get("ffg"):
        inputs["sweeps"] = [layout.graft_dir(seed, e, spec["ffg"], d) for e, d in ffg_points(wildcards.merge)]
        inputs["scores"] = [
            layout.scores(seed, THRESHOLD_BACKEND, layout.graft_name(e, spec["ffg"], d)) for e in experts
            if not fixed_density(e, wildcards.merge) for d in DENSITIES
        ] + [layout.scores(seed, THRESHOLD_BACKEND, e) for e in experts if not fixed_density(e, wildcards.merge)]
    return inputs


def merge_config_params(wildcards):
    """The merge spec and only the settings its thresholds depend on."""
    spec = MERGES[wildcards.merge]
    experts = merge_experts(wildcards.merge)
    kind = merge_moments_kind(spec)
    params = {"spec": spec, "experts": experts,
              "moments": [moments_file(wildcards.seed, e, kind) for e in experts] if kind else []}
    if spec.get("ffg"):
        params["thresholds"] = {
            "fixed": {e: fixed_density(e, wildcards.merge) for e in experts if fixed_density(e, wildcards.merge)},
            "retention": config["thresholds"].get("retention", 0.95),
            "score": THRESHOLD_SCORE,
            "tasks": {e: TASK[e] for e in experts},
            "points": ffg_points(wildcards.merge),  # one per input sweep folder, in order
        }
        if chooses_by_merge(wildcards.merge):  # the density sweep's point merges, chosen among by score
            params["thresholds"]["by_merge"] = SWEEP_POINTS[wildcards.merge]
    return params


def model_tasks(backend, model):
    """A backend's tasks for a model: every task, but only its expert's own for a sweep
    point where evaluation.sweep_tasks is own (what the density choice and the sweep table
    read; minutes saved per graft on a real model)."""
    if model.startswith("ffg/") and config["evaluation"].get("sweep_tasks", "all") == "own":
        return [TASK[model.split("/")[1]]]
    return config["evaluation"]["tasks"] if backend == "builtin" else backend_tasks(backend)


def backend_tasks(backend):
    """An external evaluator's tasks: evaluation.<backend>.tasks, else evaluation.tasks."""
    return config["evaluation"].get(backend, {}).get("tasks", config["evaluation"]["tasks"])


def backend_settings(backend):
    """How an external evaluator runs: evaluation.<backend> without its tasks and keys."""
    return {k: v for k, v in config["evaluation"].get(backend, {}).items() if k not in ("tasks", "api_keys")}


def all_tasks():
    """Every backend's tasks, in the order the tables show them."""
    return list(dict.fromkeys(config["evaluation"]["tasks"] + backend_tasks("olmes") + backend_tasks("lm_eval")))


def require_api_keys():
    """Stop before any job when an OLMES task that needs an API key lacks its variable."""
    if "olmes" not in BACKENDS:
        return
    for task, var in config["evaluation"].get("olmes", {}).get("api_keys", {}).items():
        if task in backend_tasks("olmes") and not os.environ.get(var):
            raise ValueError(f"evaluation task {task} needs the environment variable {var} (an API key)")


require_api_keys()


def require_sections():
    """Stop before any job when a chosen importance or backend has no settings."""
    uses_obs = "sparsegpt" in METRICS or any(merge_moments_kind(s) == "sparsegpt" for s in MERGES.values())
    if uses_obs and "sparsegpt" not in config:
        raise ValueError("ffg metric or trim_by sparsegpt needs a sparsegpt section "
                         "(calibration, samples, seqlen, damping)")
    # an expert without moments (e.g. a LoRA adapter) only where no job reads them
    needs = {e for e in EXPERTS if {"fisher", "fisher_rank1"} & set(METRICS)}
    needs |= {e for m, s in MERGES.items() if merge_moments_kind(s) in ("full", "rank1") for e in merge_experts(m)}
    lacking = sorted(e for e in needs if DEMO is None and e not in FISHER_EXPERTS
                     and not config["models"]["experts"][e].get("preconditioner"))
    if lacking:
        raise ValueError(f"experts {', '.join(lacking)} have no preconditioner, which the fisher FFG metric, "
                         "OTA and trim_by fisher read (use magnitude or sparsegpt for them, "
                         "or curvature source empirical_fisher)")
    if FISHER_NEEDED and DEMO is None and "calibration" not in CURVATURE:
        raise ValueError("curvature source empirical_fisher needs curvature.calibration (text) for hub or local experts")
    if config["thresholds"]["mode"] == "merge" and not (FAMILY and "builtin" in BACKENDS):
        raise ValueError("thresholds.mode merge chooses on the builtin evaluator's validation prompts of a family "
                         "the workflow builds (demo or pretrained): add builtin to evaluation.backends")
    # merge mode: merges without a density sweep choose per expert, as auto
    auto = config["thresholds"]["mode"] in ("auto", "merge") and any(s.get("ffg") for s in MERGES.values())
    if auto and THRESHOLD_BACKEND not in BACKENDS:
        raise ValueError(f"thresholds.backend {THRESHOLD_BACKEND} chooses the densities but is not in "
                         "evaluation.backends")
    if auto and THRESHOLD_SCORE is None:
        raise ValueError(f"thresholds.backend {THRESHOLD_BACKEND} needs thresholds.score: the metric of its "
                         "score rows that retention applies to (e.g. exact_match)")
    if "perplexity" in BACKENDS and not PERPLEXITY_TEXTS:
        raise ValueError("evaluation backend perplexity needs evaluation.perplexity.texts")


require_sections()


def evaluated(models, backends=BACKENDS):
    """Score files of these models, every seed."""
    return [layout.scores(s, b, m) for s in SEEDS for b in backends for m in models]


def sweep_models():
    return [layout.graft_name(e, m, d) for e in EXPERTS for m in METRICS for d in DENSITIES]


# merges of all of their experts; subset merges choose the same grafts (one expert's
# density depends on its own scores only), so the graft rows and the plots read these (not
# the points of a density sweep, each at one density)
FFG_MERGES = [m for m, spec in MERGES.items() if spec.get("ffg") and MERGE_INFO[m].subset == ALL
              and MERGE_INFO[m].density is None]


def graft_candidates():
    """Sweep points that may be an expert's chosen graft (model names): where densities
    are chosen automatically every point of the merges' FFG metrics (the builtin
    evaluator scores them all anyway), else the fixed one."""
    return sorted({layout.graft_name(e, MERGES[m]["ffg"], d) for m in FFG_MERGES for e, d in ffg_points(m)})


def graft_scores():
    """Score files of candidate grafts. The backend the automatic densities are chosen by
    (thresholds.backend, default builtin) scores every candidate; the other external
    evaluators, minutes per model, only grafts at fixed densities: an automatic choice is
    known only once the sweep is scored."""
    fixed = [p for p in graft_candidates() if fixed_density(p.split("/")[1])]
    every = [b for b in BACKENDS if b in ("builtin", THRESHOLD_BACKEND)]
    return evaluated(graft_candidates(), every) + evaluated(fixed, [b for b in BACKENDS if b not in every])


def merge_infos():
    """What the retention table needs of each merge, as plain values (job params)."""
    return {m: {"method": i.method, "subset": i.subset, "experts": list(i.experts), "density": i.density}
            for m, i in MERGE_INFO.items()}


# the merge each of the paper's claims reads, by its role (config claims: overrides)
CLAIM_MERGES = {**DEFAULT_CLAIM_MERGES, **config.get("claims", {})}


def claims_files():
    """Per seed what the claims job reads: the base, each expert's moments, the candidate grafts."""
    return {s: {"base": layout.model_dir(s, "base"), "moments": {e: moments_file(s, e) for e in EXPERTS},
                "grafts": {g: layout.model_folder(s, g) for g in graft_candidates()}} for s in SEEDS}


def claims_models():
    return [f for s in SEEDS for f in [layout.model_dir(s, "base"), *(moments_input(s, e) for e in EXPERTS),
                                       *(layout.model_folder(s, g) for g in graft_candidates())]]


SUMMARY_TABLES = ["scores.csv", "accuracy.md", "accuracy.json"]
RETENTION_TABLES = ["retention.md", "retention.csv", "retention_by_size.csv", "retention_by_seed.csv"]


def get_final_output():
    """Every merged model of every seed with the thresholds it was made with and its card,
    every sweep point, the cross-seed summary tables of the configured evaluation
    backends, the pushed merges (config publish) and the LoRA adapters (config lora)."""
    out = [f for s in SEEDS for m in MERGES for f in (layout.merged_model(s, m), layout.merge_thresholds(s, m))]
    out += [layout.model_folder(s, p) for s in SEEDS for p in sweep_models()]
    if BACKENDS:
        out += [layout.summary(t) for t in SUMMARY_TABLES]
        if MERGES:
            out += [layout.summary(t) for t in RETENTION_TABLES]
    out += [layout.model_card(s, m) for s in SEEDS for m in MERGES]
    out += [layout.published(s, m) for s, m in PUBLISHED]
    out += [layout.lora_adapter(s, m) for s, m in LORA]
    if "builtin" in BACKENDS:  # the sweep is scored by the builtin evaluator only
        out += [layout.summary("sweep.md"), layout.summary("thresholds.csv")]
        if FFG_MERGES:  # the plots show the grafts the first FFG merge chose
            out += [layout.plot("methods")]
        if MERGES:
            out += [layout.summary("claims.md")]
        if VALIDATED:
            out += [layout.summary("merge_choice.md")]
    return out
