import torch

from otamerge.curvature.calibration import Calibration
from otamerge.curvature.hessians import hessians_cached
from otamerge.logs import job

with job(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)  # sums over tokens: their bits follow the thread count
    p = snakemake.params
    cal = Calibration(snakemake.input.calibration, p.samples, p.seqlen, p.seed)
    hessians, _ = hessians_cached(snakemake.input.model, cal, snakemake.output[0])
    print(f"{len(hessians.names())} X^T X matrices from {p.samples} windows of {p.seqlen} tokens")
