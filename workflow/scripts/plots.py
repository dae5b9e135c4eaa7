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
    # the grafts and experts of the first seed, by name -> folder
    chosen = claims.chosen_statistics(inp.thresholds, p.graft_merge, p.graft_metric, p.seed, p.models["grafts"])
    plots.localization(chosen, out.localization)
    plots.mask_rank(chosen, out.mask_rank)
    moments = {e: Moments(layout.preconditioner(folder), f"moments of {e}") for e, folder in p.models["experts"].items()}
    base = Checkpoint(inp.base, "base model")
    names = [n for n in base.names() if base.dtype(n).is_floating_point]
    plots.curvature_overlap(names, list(moments), lambda e, n: moments[e].get(n).numpy(), out.overlap)
