import time

import torch

from otamerge.curvature.fisher import FisherCalibration, write_fisher
from otamerge.families import fisher_task
from otamerge.logs import job

with job(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)  # sums over samples: their bits follow the thread count
    p = snakemake.params
    cal = FisherCalibration(snakemake.input.calibration or None, p.task, p.samples, p.batch_size, p.seqlen,
                            p.seed, p.n_eval, int(snakemake.wildcards.seed), p.family)
    start = time.perf_counter()
    meta = write_fisher(snakemake.input.expert, snakemake.output[0], cal, task=fisher_task(cal))
    print(f"empirical Fisher from {meta['samples']} samples in {meta['batches']} batches "
          f"({time.perf_counter() - start:.1f} s)")
