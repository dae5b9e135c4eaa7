import math
import os

from snakemake.utils import validate

from otamerge.demo.settings import expert_config
from otamerge.densities import density_label
from otamerge.merge_specs import moments_kind as merge_moments_kind


validate(config, schema="../schemas/config.schema.yaml")

if "demo" in config:  # the demo builds its own models, then "downloads" them from disk
    DEMO = config["demo"]["outdir"]
    SOURCES = {
        "base": {"source": f"{DEMO}/base"},
        **{
            e: {
                "source": f"{DEMO}/experts/{e}",
                "preconditioner": "export/exp_avg_sq.safetensors",
                "task": spec["task"],
            }
            for e, spec in config["demo"]["experts"].items()
        },
    }
else:
    DEMO = None
    SOURCES = {"base": config["models"]["base"], **config["models"]["experts"]}
EXPERTS = [m for m in SOURCES if m != "base"]
MODELS = ["base", *EXPERTS]
TASK = {e: SOURCES[e].get("task") for e in EXPERTS}
# one spelling per sweep point: 0.1 and 0.10 are one job
DENSITIES = sorted({density_label(d) for d in config["ffg"]["densities"]}, key=float)
METRICS = config["ffg"]["metrics"]
MERGES = config["merges"]
BACKENDS = config["evaluation"]["backends"]
# job sizes: the model's size in billions of parameters, and GPUs per GPU job
SIZE_B = config.get("resources", {}).get("model_params_b", 1.0)
GPUS = config.get("resources", {}).get("gpu", 0)


wildcard_constraints:
    expert="|".join(EXPERTS),
    name="|".join(MODELS),
    backend="|".join(BACKENDS) or "builtin",
    metric="fisher|fisher_rank1|magnitude|sparsegpt",
    density=r"[0-9][0-9.e-]*",
    merge="|".join(MERGES) or "NO_MERGE",
    model=r"base|{}|ffg/[^/]+/[^/]+/[^/]+|merge/[^/]+".format("|".join(EXPERTS)),


BASE = "results/models/base"
IMPORTANCE = "results/importance/sparsegpt.safetensors"
PERPLEXITY_TEXTS = config["evaluation"].get("perplexity", {}).get("texts", {})


def scaled(fixed, per_b):
    """A resource (mem_mb, or runtime in minutes) of ``fixed + per_b`` per billion
    parameters, multiplied by the attempt so that a retried job asks for more.

    The rules' numbers are what each job holds or reads per billion parameters, with a
    margin (benchmarks/memory.py measures the streaming jobs); on a cluster, override
    them per job type with ``--set-resources merge:mem_mb=64000``."""
    return lambda wildcards, attempt: math.ceil((fixed + per_b * SIZE_B) * attempt)


def expert_dir(expert):
    """An expert as the download stage left it (weights, tokenizer, preconditioner)."""
    return f"results/models/{expert}"


def moments_file(expert, kind="full"):
    """The expert's exp_avg_sq as downloaded, its rank-1 compression, or the base's OBS
    importance (the same file for every expert)."""
    if kind == "sparsegpt":
        return IMPORTANCE
    if kind == "rank1":
        return f"results/moments/{expert}/rank1.safetensors"
    return f"{expert_dir(expert)}/preconditioner.safetensors"


def moments_input(expert, kind="full"):
    """What a job reading those moments depends on: downloaded moments live inside the
    expert's folder (a directory output), so the folder is the input."""
    return expert_dir(expert) if kind == "full" else moments_file(expert, kind)


def download_input(wildcards):
    """A source the demo builds is an output of the demo rules; hub sources have no input."""
    src = SOURCES[wildcards.name]["source"]
    return [src] if DEMO and src.startswith(f"{DEMO}/") else []


def model_dir(wildcards):
    """Folder of a model by its name in the score tables."""
    m = wildcards.model
    if m == "base":
        return BASE
    if m.startswith("ffg/"):
        return f"results/{m}"
    if m.startswith("merge/"):
        return f"results/merges/{m.split('/', 1)[1]}/model"
    return expert_dir(m)


def expert_settings(wildcards):
    """Only what this expert depends on, so editing one expert reruns only its job."""
    return expert_config(config["demo"], wildcards.expert)


def ffg_moments_kind(metric):
    return {"fisher": "full", "fisher_rank1": "rank1", "sparsegpt": "sparsegpt"}.get(metric)


def merge_experts(merge):
    return MERGES[merge].get("experts", EXPERTS)


def fixed_density(expert):
    """The configured density of an expert, or None where it is chosen automatically."""
    fixed = config["thresholds"].get("fixed", {})
    if expert in fixed:
        return density_label(fixed[expert])
    if config["thresholds"]["mode"] == "fixed":
        raise ValueError(f"thresholds.mode is fixed but thresholds.fixed has no density for {expert}")
    return None


def candidate_densities(expert):
    """The sweep points an expert's FFG threshold may come from: its fixed density, or
    every swept density when it is chosen automatically."""
    d = fixed_density(expert)
    return [d] if d else DENSITIES


def ffg_points(merge):
    """``ffg/<expert>/<metric>/<density>`` of every candidate graft of a merge using FFG."""
    return [f"ffg/{e}/{MERGES[merge]['ffg']}/{d}" for e in merge_experts(merge) for d in candidate_densities(e)]


def merge_config_inputs(wildcards):
    """Experts and moments; with FFG, the sweep points the thresholds are read from."""
    spec = MERGES[wildcards.merge]
    experts = merge_experts(wildcards.merge)
    inputs = {"experts": [expert_dir(e) for e in experts], "base": BASE}
    kind = merge_moments_kind(spec)
    if kind:
        inputs["moments"] = [moments_input(e, kind) for e in experts]
    if spec.get("ffg"):
        inputs["sweeps"] = [f"results/{p}" for p in ffg_points(wildcards.merge)]
        inputs["scores"] = [
            f"results/evaluation/builtin/ffg/{e}/{spec['ffg']}/{d}.json" for e in experts
            if not fixed_density(e) for d in DENSITIES
        ] + [f"results/evaluation/builtin/{e}.json" for e in experts if not fixed_density(e)]
    return inputs


def merge_config_params(wildcards):
    """The merge spec and only the settings its thresholds depend on."""
    spec = MERGES[wildcards.merge]
    experts = merge_experts(wildcards.merge)
    kind = merge_moments_kind(spec)
    params = {"spec": spec, "experts": experts,
              "moments": [moments_file(e, kind) for e in experts] if kind else []}
    if spec.get("ffg"):
        params["thresholds"] = {
            "fixed": {e: fixed_density(e) for e in experts if fixed_density(e)},
            "retention": config["thresholds"].get("retention", 0.95),
            "score": config["thresholds"].get("score", "token_accuracy"),
            "tasks": {e: TASK[e] for e in experts},
            "densities": {e: candidate_densities(e) for e in experts},
        }
    return params


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
    lacking = sorted(e for e in needs if DEMO is None and not SOURCES[e].get("preconditioner"))
    if lacking:
        raise ValueError(f"experts {', '.join(lacking)} have no preconditioner, which the fisher FFG metric, "
                         "OTA and trim_by fisher read (use magnitude or sparsegpt for them)")
    if "perplexity" in BACKENDS and not PERPLEXITY_TEXTS:
        raise ValueError("evaluation backend perplexity needs evaluation.perplexity.texts")


require_sections()


def evaluated(models, backends=BACKENDS):
    return expand("results/evaluation/{backend}/{model}.json", backend=backends, model=models)


def sweep_models():
    return [f"ffg/{e}/{m}/{d}" for e in EXPERTS for m in METRICS for d in DENSITIES]


FFG_MERGES = [m for m, spec in MERGES.items() if spec.get("ffg")]


def graft_candidates():
    """Sweep points that may be an expert's chosen graft: where densities are chosen
    automatically every point of the merges' FFG metrics (the builtin evaluator scores
    them all anyway), else the fixed one."""
    return sorted({p for m in FFG_MERGES for p in ffg_points(m)})


def graft_scores():
    """Score files of candidate grafts. The builtin evaluator scores every candidate (it
    scores the whole sweep anyway); external evaluators, minutes per model, only grafts at
    fixed densities: an automatic choice is known only once the sweep is scored."""
    fixed = [p for p in graft_candidates() if fixed_density(p.split("/")[1])]
    external = [b for b in BACKENDS if b != "builtin"]
    return evaluated(graft_candidates(), [b for b in BACKENDS if b == "builtin"]) + evaluated(fixed, external)


def get_final_output():
    """Every merged model with the thresholds it was made with, every sweep point, and the
    summary tables of the configured evaluation backends."""
    out = [f"results/merges/{m}/{f}" for m in MERGES for f in ("model", "thresholds.csv")]
    out += [f"results/{m}" for m in sweep_models()]
    if BACKENDS:
        out += ["results/summary/scores.csv", "results/summary/accuracy.md", "results/summary/accuracy.json"]
    if "builtin" in BACKENDS:  # the sweep is scored by the builtin evaluator only
        out += ["results/summary/sweep.md", "results/summary/thresholds.csv"]
        if FFG_MERGES:  # the plots show the grafts the first FFG merge chose
            out += ["results/plots/methods.png"]
    return out
