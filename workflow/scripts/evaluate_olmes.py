from otamerge.io.atomic import write_json
from otamerge.evaluation.olmes import evaluate
from otamerge.logs import job

with job(snakemake.log[0]):
    rows = evaluate(snakemake.input[0], snakemake.wildcards.model, snakemake.params.tasks,
                    snakemake.output.raw, snakemake.params.settings)
    write_json(snakemake.output.scores, rows)
