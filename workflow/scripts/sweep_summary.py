from otamerge.logs import job
from otamerge.report.summary import write_sweep

with job(snakemake.log[0]):
    out = snakemake.output
    write_sweep(snakemake.input.scores, snakemake.params.merges,
                snakemake.params.tasks, sweep_md=out.sweep, sweep_csv=out.sweep_csv, thresholds_csv=out.thresholds)
