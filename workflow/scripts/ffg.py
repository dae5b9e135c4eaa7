from otamerge.ffg import ffg_graft
from otamerge.logs import to_file

with to_file(snakemake.log[0]):
    metric = snakemake.wildcards.metric.removesuffix("_rank1")  # fisher_rank1: fisher from rank-1 moments
    ffg_graft(snakemake.input.base, snakemake.input.expert, snakemake.params.moments,
              {snakemake.params.density: snakemake.output[0]}, metric)
