from otamerge.demo.texts import write_texts
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    write_texts(snakemake.output.calibration, snakemake.output.heldout, p.n_examples, p.n_eval, p.seed, p.family)
