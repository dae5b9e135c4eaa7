"""FFG vs magnitude grafting on the demo experts: own-task accuracy per density.

    python benchmarks/ffg_demo_sweep.py [--seed 0] [--demo resources/demo] [--config config/config.yaml]

Needs the demo models of that seed (`make demo`: resources/demo/seed0). Writes benchmarks/output/ffg_demo_sweep.{csv,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from otamerge.workflow import layout
from otamerge.demo.train import MOMENTS_FILE
from otamerge.evaluation.builtin import evaluate, load_model
from otamerge.ffg.graft import FfgOptions, ffg_sweep

DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="resources/demo", help="the demo's outdir (seed<N>/ below it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--out", default="benchmarks/output")
    args = ap.parse_args()
    cfg = yaml.safe_load(open(args.config))
    demo = Path(layout.demo_root(args.demo, args.seed))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in cfg["demo"]["experts"].items():
            expert = demo / "experts" / name
            for metric in ("fisher", "magnitude"):
                folders = ffg_sweep(demo / "base", expert, expert / MOMENTS_FILE, DENSITIES,
                                    metric, Path(tmp) / name / metric, FfgOptions(progress=False))
                for d, folder in folders.items():
                    model, tok = load_model(folder)
                    for r in evaluate(model, tok, [spec["task"]], cfg["demo"]["n_eval"], args.seed, name):
                        rows.append({"expert": name, "metric": metric, "density": d, "score_metric": r["metric"],
                                     "score": r["score"]})
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ffg_demo_sweep.csv", index=False)
    md = []
    for m in ("exact_match", "token_accuracy"):
        t = df[df.score_metric == m].pivot_table(index=["expert", "metric"], columns="density", values="score")
        md += [f"## own-task {m}", "", t.to_markdown(floatfmt=".2f"), ""]
        avg = df[df.score_metric == m].pivot_table(index="metric", columns="density", values="score")
        md += [f"mean over experts ({m}):", "", avg.to_markdown(floatfmt=".3f"), ""]
    (out / "ffg_demo_sweep.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
