from otamerge.logs import job
from otamerge.report.merge_choice import write_merge_choice

with job(snakemake.log[0]):
    inp, out, p = snakemake.input, snakemake.output, snakemake.params
    write_merge_choice(inp.validation, inp.by_seed, p.points, p.experts, p.tasks, p.metric, md=out.table, csv=out.csv)
