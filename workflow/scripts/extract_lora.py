from otamerge.extract_lora import ExtractOptions, extract_lora
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    report = extract_lora(snakemake.input.model, snakemake.input.base, snakemake.output[0],
                          ExtractOptions(rank=p.rank, sv_epsilon=p.sv_epsilon, progress=False))
    print(f"rank <= {p.rank}: {report['adapter_bytes']:,} bytes, relative error of the linear layers' "
          f"task vectors {report['relative_error']:.4f}")
