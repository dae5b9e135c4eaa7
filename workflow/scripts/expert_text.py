from otamerge.demo.texts import write_expert_text
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    write_expert_text(snakemake.output[0], p.family, p.task, p.examples, p.n_eval, p.seed)
