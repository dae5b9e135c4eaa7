from otamerge.demo.build import build_base
from otamerge.demo.settings import train_settings
from otamerge.logs import job

with job(snakemake.log[0]):
    p = snakemake.params
    build_base(snakemake.output[0], seed=p.seed, settings=train_settings(p.settings),
               arch=p.arch, n_eval=p.n_eval, threads=p.torch_threads, **p.base_data)
