from otamerge.curvature.hessians import write_importance
from otamerge.logs import job

with job(snakemake.log[0]):
    meta = write_importance(snakemake.input.hessians, snakemake.input.base, snakemake.output[0],
                            snakemake.params.damping)
    info = meta["source_metadata"]
    print(f"{info['linear_tensors']} linear weights; magnitude fallback for {', '.join(info['fallback_magnitude'])}")
