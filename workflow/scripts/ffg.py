from pathlib import Path

from otamerge.ffg import ffg_sweep
from otamerge.logs import to_file

with to_file(snakemake.log[0]):
    out = Path(snakemake.output[0])
    metric = snakemake.wildcards.metric.removesuffix("_rank1")  # fisher_rank1: fisher from rank-1 moments
    moments = snakemake.params.moments
    made = ffg_sweep(snakemake.input.base, snakemake.input.expert, moments, [snakemake.params.density],
                     metric, out.parent)
    assert list(made.values()) == [out], f"density folder {made} is not the rule's output {out}"
