from otamerge.io.download import Source, download
from otamerge.logs import job

with job(snakemake.log[0]):
    s = snakemake.params.source
    src = Source(name=snakemake.wildcards.name, ref=s["source"], revision=s.get("revision", "main"),
                 preconditioner=s.get("preconditioner"))
    download(src, snakemake.output[0])
