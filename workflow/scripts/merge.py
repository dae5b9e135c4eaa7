from otamerge.logs import to_file
from otamerge.merge import MergeOptions, merge_file

with to_file(snakemake.log[0]):
    merge_file(snakemake.input.config, snakemake.output[0], MergeOptions(seed=snakemake.params.seed))
