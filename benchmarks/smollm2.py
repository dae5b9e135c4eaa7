"""What a run of the real pretrained family (config/smollm2.yaml) cost and where FFG's masks
sit on a real LLM, from the run's own files.

    snakemake --profile profiles/local --cores 2 --configfile config/smollm2.yaml
    python benchmarks/smollm2.py [--run runs/smollm2] [--density 0.05]

Prints Markdown: per rule, the jobs, their summed and longest wall seconds and the largest
peak RSS (Snakemake's benchmark files); per expert, its own-task exact match and token
accuracy against the base's with its training seconds; and the share of the kept entries
of the fisher grafts at ``--density`` by module and by depth (thirds of the layers), mean
over experts and seeds, next to each group's share of the parameters (what a uniform mask
would keep).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from otamerge.report.sites import layer_of, role_of


def rule_costs(run: Path) -> pd.DataFrame:
    rows = []
    for tsv in (run / "results/benchmarks").rglob("*.tsv"):
        t = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": tsv.relative_to(run / "results/benchmarks").parts[0], "s": float(t.s.iloc[0]),
                     "max_rss_mb": float(t.max_rss.iloc[0])})
    df = pd.DataFrame(rows)
    return df.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), longest_s=("s", "max"),
                                  peak_rss_mb=("max_rss_mb", "max")).sort_values("total_s", ascending=False)


def experts(run: Path) -> pd.DataFrame:
    scores = pd.read_csv(run / "results/summary/scores.csv")
    rows = []
    for seed_dir in sorted((run / "results").glob("seed*")):
        seed = int(seed_dir.name[4:])
        s = scores[(scores.seed == seed) & (scores.backend == "builtin")]
        for tsv in sorted((run / "results/benchmarks/pretrained_expert" / seed_dir.name).glob("*.tsv")):
            name = tsv.stem
            task = json.loads((run / f"resources/smollm2/seed{seed}/experts/{name}/training.json").read_text())["task"]
            row = {"seed": seed, "expert": name, "train_s": float(pd.read_csv(tsv, sep="\t").s.iloc[0])}
            for metric in ("exact_match", "token_accuracy"):
                own = s[(s.task == task) & (s.metric == metric)].set_index("model").score
                row[f"base_{metric}"], row[f"expert_{metric}"] = own["base"], own[name]
            rows.append(row)
    return pd.DataFrame(rows)


def depth(layer: str, n_layers: int) -> str:
    if layer == "other":
        return "embeddings and final norm"
    third = 3 * int(layer) // n_layers
    return ["layers, first third", "layers, middle third", "layers, last third"][third]


def mask_sites(run: Path, density: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Share of kept entries (and of parameters) by module role and by depth."""
    per_graft = []
    for f in sorted(run.glob(f"results/seed*/ffg/*/fisher/{density}/statistics.json")):
        stats = json.loads(f.read_text())
        t = pd.DataFrame([{"name": n, "kept": s["kept"], "total": s["total"]} for n, s in stats["tensors"].items()])
        layers = [layer_of(n) for n in t.name]
        n_layers = 1 + max(int(x) for x in layers if x != "other")
        t["role"] = [role_of(n) for n in t.name]
        t["depth"] = [depth(x, n_layers) for x in layers]
        t["graft"] = str(f.parent)
        per_graft.append(t)
    t = pd.concat(per_graft)
    out = []
    for key in ("role", "depth"):
        g = t.groupby(["graft", key])[["kept", "total"]].sum()
        share = g.kept / g.kept.groupby(level="graft").transform("sum")
        params = g.total / g.total.groupby(level="graft").transform("sum")
        table = pd.DataFrame({"kept_share": share.groupby(level=key).mean(),
                              "kept_share_min": share.groupby(level=key).min(),
                              "kept_share_max": share.groupby(level=key).max(),
                              "param_share": params.groupby(level=key).mean()})
        table["enrichment"] = table.kept_share / table.param_share
        out.append(table.sort_values("kept_share", ascending=False))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/smollm2", type=Path)
    ap.add_argument("--density", default="0.05")
    args = ap.parse_args()
    print("## jobs per rule\n")
    print(rule_costs(args.run).to_markdown(floatfmt=".1f"))
    print("\n## experts (own task, builtin)\n")
    print(experts(args.run).to_markdown(index=False, floatfmt=".3f"))
    roles, depths = mask_sites(args.run, args.density)
    print(f"\n## where FFG keeps entries (fisher, density {args.density}; mean over grafts, min-max)\n")
    print(roles.to_markdown(floatfmt=".3f"))
    print()
    print(depths.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
