from otamerge.demo.settings import train_settings
from otamerge.logs import job
from otamerge.pretrained.experts import build_expert

with job(snakemake.log[0]):
    p = snakemake.params
    build_expert(snakemake.input[0], snakemake.output[0], task=p.task, seed=p.seed,
                 settings=train_settings(p.settings), n_eval=p.n_eval, threads=p.torch_threads)
