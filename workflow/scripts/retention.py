from otamerge.logs import job
from otamerge.report.summary import write_retention

with job(snakemake.log[0]):
    out = snakemake.output
    write_retention(snakemake.input, snakemake.params.merges, snakemake.params.tasks, table=out.table, csv=out.csv,
                    by_size_csv=out.by_size, by_seed_csv=out.by_seed)
