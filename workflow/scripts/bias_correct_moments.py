from otamerge.logs import job
from otamerge.curvature.moments import Moments, correct_bias

with job(snakemake.log[0]):
    moments = snakemake.params.moments
    opt = snakemake.params.optimizer
    applied = correct_bias(Moments(moments, f"moments {moments}"), snakemake.output[0], opt.get("step"), opt.get("beta2"))
    print(f"exp_avg_sq divided by 1 - beta2^t = {applied['factor']:.6g} (t={applied['step']}, beta2={applied['beta2']})")
