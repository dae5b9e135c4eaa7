import math
import re

from snakemake.utils import validate

from otamerge.demo.settings import base_data, expert_config
from otamerge.workflow import layout
from otamerge.workflow.merge_specs import FFG_METRICS
from otamerge.workflow.plan import Plan
from otamerge.workflow.targets import claims_files, claims_models, final_output, plotted_models


# the schema's defaults are filled in here, before anything reads the config
validate(config, schema="../schemas/config.schema.yaml")

# every decision of the run (models, merges, sweeps, sources, thresholds, targets), made
# once from the validated config by the package (otamerge.workflow.plan, unit-tested);
# a config whose keys disagree stops here, before any job
PLAN = Plan(config)


def alternatives(names, otherwise=r"(?!)"):
    """A wildcard constraint matching exactly these names (merge names hold dots); for no
    names ``otherwise``, by default a pattern matching nothing (an empty constraint would
    match anything)."""
    return "|".join(re.escape(n) for n in names) or otherwise


wildcard_constraints:
    seed=r"\d+",
    expert=alternatives(PLAN.experts),
    name=alternatives(PLAN.models),
    backend=alternatives(PLAN.backends, "builtin"),
    metric=alternatives(FFG_METRICS),
    density=r"[0-9][0-9.e-]*",
    merge=alternatives(PLAN.merges, "NO_MERGE"),
    model=r"base|{}|ffg/[^/]+/[^/]+/[^/]+|merge/[^/]+".format(alternatives(PLAN.experts)),


def scaled(fixed, per_b):
    """A resource (mem_mb, or runtime in minutes) of ``fixed + per_b`` per billion
    parameters, multiplied by the attempt so that a retried job asks for more.

    The rules' numbers are what each job holds or reads per billion parameters, with a
    margin (benchmarks/memory.py measures the streaming jobs); on a cluster, override
    them per job type with ``--set-resources merge:mem_mb=64000``."""
    return lambda wildcards, attempt: math.ceil((fixed + per_b * PLAN.size_b) * attempt)


# Input and params adapters: the rules' wildcards to the plan's answers.


def get_download_input(wildcards):
    """A source the family's rules build is their output; hub sources have no input."""
    return [PLAN.source(wildcards.name, wildcards.seed)["source"]] if PLAN.outdir else []


def get_model(wildcards):
    """Folder of a model of a seed by its name in the score tables."""
    return layout.model_folder(wildcards.seed, wildcards.model)


def get_expert_settings(wildcards):
    """Only what this expert depends on, so editing one expert reruns only its job."""
    return expert_config(PLAN.build, wildcards.expert)


def get_ffg_moments(wildcards):
    """The moments file an FFG metric reads (the job's input: its folder where downloaded)."""
    kind = FFG_METRICS[wildcards.metric][1]
    return PLAN.moments_input(wildcards.seed, wildcards.expert, kind) if kind else []


def get_ffg_moments_file(wildcards):
    kind = FFG_METRICS[wildcards.metric][1]
    return PLAN.moments_file(wildcards.seed, wildcards.expert, kind) if kind else None


def get_merge_config_inputs(wildcards):
    return PLAN.merge_config_inputs(wildcards.seed, wildcards.merge)


def get_merge_config_params(wildcards):
    return PLAN.merge_config_params(wildcards.seed, wildcards.merge)


def get_final_output():
    return final_output(PLAN)
