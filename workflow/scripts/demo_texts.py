from otamerge.demo.texts import write_texts
from otamerge.logs import to_file

with to_file(snakemake.log[0]):
    p = snakemake.params
    write_texts(snakemake.output.calibration, snakemake.output.heldout, p.n_examples, p.n_eval, p.seed)
