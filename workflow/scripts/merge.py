from otamerge.logs import job
from otamerge.merge import MergeOptions, merge_file

with job(snakemake.log[0]):
    merge_file(snakemake.input.config, snakemake.output[0], MergeOptions(seed=snakemake.params.seed))
