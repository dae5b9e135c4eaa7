from otamerge.ffg.graft import ffg_graft
from otamerge.logs import job
from otamerge.workflow.merge_specs import FFG_METRICS

with job(snakemake.log[0]):
    saliency, _ = FFG_METRICS[snakemake.wildcards.metric]  # fisher_rank1: fisher from rank-1 moments
    ffg_graft(snakemake.input.base, snakemake.input.expert, snakemake.params.moments,
              {snakemake.params.density: snakemake.output[0]}, saliency)
