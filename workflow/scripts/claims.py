from otamerge.logs import job
from otamerge.report.claims import SeedFiles, write_claims

with job(snakemake.log[0]):
    inp, out, p = snakemake.input, snakemake.output, snakemake.params
    seeds = {int(s): SeedFiles(**files) for s, files in p.seeds.items()}
    write_claims(inp.by_seed, inp.sweep, inp.thresholds, seeds, p.merges, p.ffg_metric, "exact_match",
                 md=out.table, csv=out.csv)
