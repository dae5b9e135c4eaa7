from otamerge.io.atomic import write_json
from otamerge.evaluation.lm_eval import evaluate
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    rows = evaluate(snakemake.input[0], snakemake.wildcards.model, p.tasks, snakemake.output.raw, p.settings,
                    p.n, p.seed, p.family)
    write_json(snakemake.output.scores, rows)
