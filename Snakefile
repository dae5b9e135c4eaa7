# OTA merging with Fast Fisher Grafting: the workflow's table of contents.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# On clusters these run where snakemake runs: seconds of work, and compute nodes often
# have no route to the Hugging Face hub.
localrules:
    download,
    merge_config,
    summary,
    retention,
    sweep_summary,


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/importance.smk"
include: "workflow/rules/curvature.smk"
include: "workflow/rules/ffg.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
