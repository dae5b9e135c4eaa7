"""Empirical Fisher vs Adam's exp_avg_sq on the demo experts: FFG sweeps and OTA merges.

    python benchmarks/fisher_demo.py [--demo resources/demo] [--seed 0] [--samples 1024]

For each expert of a built demo seed (`make demo`), the empirical Fisher of its own task
(otamerge.curvature.fisher, per-sample, and with batch_size 128 as in the paper's file name) is timed
and written; then, in memory (as benchmarks/demo_design.py does), FFG grafts at the
config's densities and density 1 with each curvature and with magnitude are scored on the
expert's own task, and OTA+FFG (densities chosen as the workflow's auto mode does), OTA
without masks and Fisher averaging merge the five experts with each curvature. Writes
benchmarks/output/fisher_demo.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from otamerge.workflow import layout
from otamerge.demo.train import MOMENTS_FILE
from otamerge.evaluation.builtin import evaluate, load_model
from otamerge.curvature.fisher import FisherCalibration, write_fisher
from otamerge.families import fisher_task
from otamerge.report.retention import gain_ratio

sys.path.insert(0, str(Path(__file__).parent))
from demo_design import _state, _threshold, merges  # noqa: E402  (the in-memory merges)


def curvatures(demo: Path, tasks: dict[str, str], args, n_eval: int, out: Path) -> tuple[dict, dict]:
    """name -> expert -> moments, and the seconds each empirical Fisher took."""
    curv = {"adam": {e: load_file(demo / "experts" / e / MOMENTS_FILE) for e in tasks}}
    seconds = {}
    for label, bs in (("empirical_fisher", 1), ("empirical_fisher_bs128", 128)):
        curv[label] = {}
        for e, task in tasks.items():
            cal = FisherCalibration(task=task, samples=args.samples, batch_size=bs, seed=args.seed, n_eval=n_eval)
            path = out / f"{label}_{e}.safetensors"
            start = time.perf_counter()
            write_fisher(demo / "experts" / e, path, cal, device="cpu", progress=False, task=fisher_task(cal))
            seconds.setdefault(label, {})[e] = round(time.perf_counter() - start, 2)
            curv[label][e] = load_file(path)
    return curv, seconds


class Demo:
    """The demo seed's models in memory and a scorer of state dicts on the demo tasks."""

    def __init__(self, root: Path, tasks: dict[str, str], n_eval: int, seed: int):
        self.tasks, self.n_eval, self.seed = tasks, n_eval, seed
        self.model, self.tok = load_model(root / "base")
        self.base = _state(self.model)
        self.experts = {e: _state(load_model(root / "experts" / e)[0]) for e in tasks}
        self.ref = {e: self.score(self.experts[e], [t]) for e, t in tasks.items()}
        self.base_scores = self.score(self.base, sorted(set(tasks.values())))

    def score(self, state: dict, task_list: list[str]) -> dict[tuple[str, str], float]:
        self.model.load_state_dict(state)
        rows = evaluate(self.model, self.tok, task_list, self.n_eval, self.seed, "m")
        return {(r["task"], r["metric"]): r["score"] for r in rows}

    def retention(self, state: dict) -> float:
        s = self.score(state, sorted(set(self.tasks.values())))
        gains = [gain_ratio(s[(t, "exact_match")], self.base_scores[(t, "exact_match")],
                            self.ref[e][(t, "exact_match")]) for e, t in self.tasks.items()]
        return round(sum(gains) / len(gains), 3)


def sweep(demo: Demo, name: str, curv: dict | None, densities: list[float], keep: float, res: dict):
    """Own-task exact match of FFG grafts (or magnitude's, curv None) at each density; the
    saliencies and each expert's threshold at the density the workflow's auto mode picks."""
    rows, thresholds, sal = [], {}, {}
    for e, t in demo.tasks.items():
        tv = {k: demo.experts[e][k] - demo.base[k] for k in demo.base if demo.base[k].is_floating_point()}
        sal[e] = {k: (tv[k].abs() if curv is None else curv[e][k] * tv[k].square()) for k in tv}
        for d in densities:
            thr = _threshold(sal[e], d) if d < 1 else float("-inf")
            graft = {k: torch.where(sal[e][k] >= thr, demo.experts[e][k], demo.base[k]) if k in sal[e]
                     else demo.base[k] for k in demo.base}
            s = demo.score(graft, [t])
            rows.append({"curvature": name, "expert": e, "density": d, "exact_match": s[(t, "exact_match")]})
            if e not in thresholds and (d == 1 or s[(t, "token_accuracy")] >= keep * demo.ref[e][(t, "token_accuracy")]):
                thresholds[e] = thr if d < 1 else 0.0  # as the workflow: the whole expert when none keeps enough
                res.setdefault("chosen_density", {}).setdefault(name, {})[e] = d
    return rows, thresholds, sal


def normalised(curv: dict) -> dict:
    """Each expert's v scaled so that mean(v^0.5) = 1: OTA's normalise: global at power 0.5."""
    out = {}
    for e, v in curv.items():
        scale = float(torch.cat([t.reshape(-1).sqrt() for t in v.values()]).mean()) ** 2
        out[e] = {k: t / scale for k, t in v.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="resources/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--out", default="benchmarks/output")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load(open(args.config))
    n_eval, keep = cfg["demo"]["n_eval"], cfg["thresholds"].get("retention", 0.95)
    root = Path(layout.demo_root(args.demo, args.seed))
    tasks = {e: s["task"] for e, s in cfg["demo"]["experts"].items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curv, seconds = curvatures(root, tasks, args, n_eval, out)
    demo = Demo(root, tasks, n_eval, args.seed)
    rows, res = [], {"seconds": seconds, "merges": {}}
    for name in [*curv, "magnitude"]:
        r, thresholds, sal = sweep(demo, name, curv.get(name), sorted(cfg["ffg"]["densities"]) + [1.0], keep, res)
        rows += r
        if name == "magnitude":
            continue
        # OTA weighs experts against each other by v^p: the scale of each expert's curvature matters
        res.setdefault("mean_curvature", {})[name] = {
            e: float(torch.cat([v.reshape(-1) for v in curv[name][e].values()]).mean()) for e in tasks}
        for label, c in ((name, curv[name]), (f"{name}, normalise global", normalised(curv[name]))):
            for merge, state in merges(demo.base, demo.experts, c, thresholds, sal).items():
                if merge in ("ota_ffg", "ota") or (merge == "fisher" and c is curv[name]):
                    res["merges"].setdefault(merge, {})[label] = demo.retention(state)
    report(pd.DataFrame(rows), res, out)


def report(sweep: pd.DataFrame, res: dict, out: Path) -> None:
    per_expert = sweep.pivot_table(index=["expert", "curvature"], columns="density", values="exact_match")
    mean = sweep.pivot_table(index="curvature", columns="density", values="exact_match")
    md = ["## FFG own-task exact match, mean over experts", "", mean.to_markdown(floatfmt=".3f"), "",
          "## per expert", "", per_expert.to_markdown(floatfmt=".2f"), "",
          "## retention (exact match) of merges of all experts", "",
          pd.DataFrame(res["merges"]).to_markdown(floatfmt=".3f"), "",
          "## density chosen for OTA+FFG (auto mode: token accuracy >= retention x the expert's)", "",
          pd.DataFrame(res["chosen_density"]).to_markdown(), "",
          "## mean curvature of each expert (OTA weighs experts by v^0.5)", "",
          pd.DataFrame(res["mean_curvature"]).to_markdown(floatfmt=".3g"), "",
          "## seconds per empirical Fisher (1 CPU thread)", "", pd.DataFrame(res["seconds"]).to_markdown(), ""]
    (out / "fisher_demo.md").write_text("\n".join(md))
    (out / "fisher_demo.json").write_text(json.dumps({**res, "sweep": sweep.to_dict("records")}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
