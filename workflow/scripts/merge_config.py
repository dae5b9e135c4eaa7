import pandas as pd
import yaml

from otamerge.io.atomic import atomic_file
from otamerge.ffg.density_choice import read_statistics, thresholds_config
from otamerge.workflow.layout import graft_name, graft_statistics
from otamerge.logs import job
from otamerge.workflow.merge_specs import merge_template, own_task_scores
from otamerge.report.merge_choice import chosen_density, validation_retention
from otamerge.report.summary import load_scores

COLUMNS = ["expert", "mode", "density", "threshold", "achieved_density", "metric", "score", "expert_score",
           "reason"]

with job(snakemake.log[0]):
    p, inp = snakemake.params[0], snakemake.input
    experts, moments = p["experts"], p["moments"] or None  # expert -> its folder, its moments file
    cfg = merge_template(p["spec"], experts, inp.base, moments, p.get("grams"))
    rows = []
    if p["spec"].get("ffg"):
        t, metric = p["thresholds"], p["spec"]["ffg"]
        stats = {}
        for point in t["points"]:  # every candidate graft: expert, density and folder
            stats.setdefault(point["expert"], {})[float(point["density"])] = read_statistics(
                graft_statistics(point["graft"]))
        names = {graft_name(pt["expert"], metric, pt["density"]): (pt["expert"], float(pt["density"]))
                 for pt in t["points"]}
        names.update({e: (e, 1.0) for e in experts})
        table = own_task_scores(inp.get("scores", []), names, t["tasks"], t["score"])
        scores = {e: {r.density: r.score for r in table[table.expert == e].itertuples()} for e in experts}
        fixed = {e: float(d) for e, d in t["fixed"].items()}
        if t.get("by_merge"):  # one density for every expert: its merged model keeps most on validation prompts
            kept = validation_retention(load_scores(inp.validation), t["by_merge"], experts, t["tasks"], t["score"])
            d = chosen_density(kept)
            fixed = {e: float(d) for e in experts}
        cfg, rows = thresholds_config(cfg, {e: stats[e] for e in experts}, fixed, scores, t["retention"], experts)
        if t.get("by_merge"):
            why = ", ".join(f"{x}: {r:.4g}" for x, r in kept.items())
            rows = [{**r, "mode": "merge", "reason": f"the density whose merged model keeps the most of the experts' "
                                                     f"validation gain ({t['score']}; {why})"} for r in rows]
    with atomic_file(snakemake.output.config) as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    with atomic_file(snakemake.output.choices) as fh:
        pd.DataFrame(rows, columns=COLUMNS).to_csv(fh, index=False)
    print(yaml.safe_dump(cfg, sort_keys=False))
