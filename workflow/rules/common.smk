from snakemake.utils import validate

from otamerge.demo.settings import expert_config


validate(config, schema="../schemas/config.schema.yaml")

DEMO = config["demo"]["outdir"]
EXPERTS = list(config["demo"]["experts"])
MODELS = ["base", *EXPERTS]


wildcard_constraints:
    expert="|".join(EXPERTS),
    model="|".join(MODELS),
    backend="|".join(config["evaluation"]["backends"]),


def model_dir(wildcards):
    """Folder of a model named in the config (the base or an expert)."""
    if wildcards.model == "base":
        return f"{DEMO}/base"
    return f"{DEMO}/experts/{wildcards.model}"


def expert_settings(wildcards):
    """Only what this expert depends on, so editing one expert reruns only its job."""
    return expert_config(config["demo"], wildcards.expert)


def get_final_output():
    return [
        "results/summary/scores.csv",
        "results/summary/accuracy.md",
        "results/summary/accuracy.json",
    ]
