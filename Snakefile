# OTA merging with Fast Fisher Grafting: the workflow's table of contents.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# a config's own working directory (config/smollm2.yaml: runs/smollm2): its models,
# results and logs never mix with the demo's, and paths in it are relative to it
if config.get("workdir"):

    workdir: config["workdir"]


report: "workflow/report/workflow.rst"


# On clusters these run where snakemake runs: seconds of work, and compute nodes often
# have no route to the Hugging Face hub.
localrules:
    download,
    merge_config,
    summary,
    retention,
    sweep_summary,
    model_card,
    publish,


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/pretrained.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/importance.smk"
include: "workflow/rules/curvature.smk"
include: "workflow/rules/regmean.smk"
include: "workflow/rules/ffg.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/publish.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
