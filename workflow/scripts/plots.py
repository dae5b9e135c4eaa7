from otamerge.workflow import layout
from otamerge.report import claims, plots
from otamerge.io.checkpoint import Checkpoint
from otamerge.logs import job
from otamerge.curvature.moments import Moments

with job(snakemake.log[0]):
    inp, out, p = snakemake.input, snakemake.output, snakemake.params
    plots.sweep_curves(inp.sweep, out.sweep, p.score)
    plots.method_comparison(inp.retention, inp.by_size, inp.scores, out.methods, p.score)
    plots.density_curves(inp.retention, inp.thresholds, out.density)
    # the grafts (model name -> folder) and experts of the first seed, as the rule lists them
    chosen = claims.chosen_statistics(inp.thresholds, p.graft_merge, p.graft_metric, p.seed,
                                     dict(zip(p.grafts, inp.grafts)))
    plots.localization(chosen, out.localization)
    plots.mask_rank(chosen, out.mask_rank)
    moments = {e: Moments(layout.preconditioner(folder), f"moments of {e}") for e, folder in zip(p.experts, inp.experts)}
    base = Checkpoint(inp.base, "base model")
    names = [n for n in base.names() if base.dtype(n).is_floating_point]
    plots.curvature_overlap(names, list(moments), lambda e, n: moments[e].get(n).numpy(), out.overlap)
