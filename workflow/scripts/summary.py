from otamerge.logs import job
from otamerge.report.summary import write_summary

with job(snakemake.log[0]):
    out = snakemake.output
    write_summary(snakemake.input.scores, snakemake.params.tasks, scores=out.scores, table=out.table,
                  matrix_json=out.matrix, graft_scores=snakemake.input.grafts,
                  threshold_files=snakemake.params.ffg_metrics)
