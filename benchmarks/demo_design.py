"""Measure a demo design in one process: train base and experts, graft, merge, score.

A design is the demo section of a config (arch, base, expert_defaults, experts) plus
overrides on the command line. The merges here are small in-memory re-statements of the
workflow's (OTA+FFG with each expert's density chosen as the workflow's automatic mode
does, OTA without masks, Fisher averaging, linear, TIES at density 0.3, task arithmetic),
enough to rank designs in minutes; the numbers a design is judged by in the end come from
the workflow itself (`make demo`, config/demo-seeds.yaml).

    python benchmarks/demo_design.py --work /tmp/d --seed 0 --set base.alternative=0.5 --set expert_defaults.lr=3e-4

prints one JSON line: base, expert and merge exact match on each own task, and retention
= mean over experts of (merge - base) / (expert - base).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from safetensors.torch import load_file

from otamerge.demo.build import build_family
from otamerge.demo.train import MOMENTS_FILE
from otamerge.report.retention import gain_ratio
from otamerge.evaluation.builtin import evaluate, load_model

def _set(cfg: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_moments(expert_dir) -> dict[str, torch.Tensor]:
    return load_file(f"{expert_dir}/{MOMENTS_FILE}")


def _threshold(sal: dict[str, torch.Tensor], density: float) -> float:
    flat = torch.cat([s.reshape(-1) for s in sal.values()])
    k = max(1, round(density * flat.numel()))
    return float(torch.topk(flat, k).values[-1])


def _ties_trim(t: torch.Tensor, density: float) -> torch.Tensor:
    k = max(1, round(density * t.numel()))
    if k >= t.numel():
        return t
    thr = t.abs().reshape(-1).kthvalue(t.numel() - k + 1).values
    return torch.where(t.abs() >= thr, t, torch.zeros_like(t))


def merges(base: dict, experts: dict[str, dict], moments: dict[str, dict], thresholds: dict[str, float],
           ffg_sal: dict[str, dict]) -> dict[str, dict]:
    names = list(experts)
    out = {k: {} for k in ("task_arithmetic", "linear", "ties", "ota", "ota_ffg", "fisher")}
    eps = 1e-26
    for key, w0 in base.items():
        if not w0.is_floating_point() or key not in moments[names[0]]:
            for m in out.values():
                m[key] = w0
            continue
        ts = [experts[e][key] - w0 for e in names]
        vs = [moments[e][key] for e in names]
        out["task_arithmetic"][key] = w0 + sum(ts)
        out["linear"][key] = w0 + sum(ts) / len(ts)
        trimmed = [_ties_trim(t, 0.3) for t in ts]
        sign = torch.sign(sum(trimmed))
        agree = [(torch.sign(t) == sign) & (t != 0) for t in trimmed]
        num = sum(t * a for t, a in zip(trimmed, agree))
        den = sum(a.float() for a in agree)
        out["ties"][key] = w0 + torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(w0))
        wts = [v.sqrt() + eps for v in vs]
        out["ota"][key] = w0 + sum(w * t for w, t in zip(wts, ts)) / sum(wts)
        masks = [ffg_sal[e][key] >= thresholds[e] for e in names]
        mw = [(v.sqrt() + eps) * m for v, m in zip(vs, masks)]
        tot = sum(mw)
        merged = w0 + sum(w * t for w, t in zip(mw, ts)) / torch.where(tot > 0, tot, torch.ones_like(tot))
        out["ota_ffg"][key] = torch.where(tot > 0, merged, w0)
        fw = [v + eps for v in vs]
        out["fisher"][key] = sum(w * experts[e][key] for w, e in zip(fw, names)) / sum(fw)
    return out


def run(cfg: dict, seed: int, work: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    demo = cfg["demo"]
    t0 = time.time()
    build_family(work, demo, seed, threads)
    t_train = time.time() - t0
    tasks = {e: s["task"] for e, s in demo["experts"].items()}
    model, tok = load_model(f"{work}/base")
    all_tasks = sorted(set(tasks.values()))

    def score(state: dict, metric: str = "exact_match") -> dict[str, float]:
        model.load_state_dict(state)
        rows = evaluate(model, tok, all_tasks, demo["n_eval"], seed, "m")
        return {r["task"]: r["score"] for r in rows if r["metric"] == metric}

    base = _state(model)
    experts = {e: _state(load_model(f"{work}/experts/{e}")[0]) for e in tasks}
    moments = {e: _load_moments(f"{work}/experts/{e}") for e in tasks}
    res = {"base": score(base), "experts": {}, "ffg": {}, "magnitude": {}}
    densities, keep = sorted(cfg["ffg"]["densities"]), cfg["thresholds"].get("retention", 0.95)
    thresholds, sal = {}, {}
    for e, task in tasks.items():
        res["experts"][e] = score(experts[e])
        own_tok = score(experts[e], "token_accuracy")[task]
        sal[e] = {k: moments[e][k] * (experts[e][k] - base[k]).square() for k in moments[e]}
        mag = {k: (experts[e][k] - base[k]).abs() for k in moments[e]}
        chosen = None
        for d in densities:
            thr = _threshold(sal[e], d)
            graft = {k: torch.where(sal[e][k] >= thr, experts[e][k], base[k]) if k in sal[e] else base[k]
                     for k in base}
            model.load_state_dict(graft)
            rows = evaluate(model, tok, [task], demo["n_eval"], seed, "g")
            sc = {r["metric"]: r["score"] for r in rows}
            res["ffg"].setdefault(e, {})[d] = sc["exact_match"]
            mthr = _threshold(mag, d)
            mgraft = {k: torch.where(mag[k] >= mthr, experts[e][k], base[k]) if k in mag else base[k] for k in base}
            res["magnitude"].setdefault(e, {})[d] = score(mgraft)[task]
            if chosen is None and sc["token_accuracy"] >= keep * own_tok:
                chosen, thresholds[e] = d, thr
        if chosen is None:  # as the workflow does: the whole expert, no mask
            chosen, thresholds[e] = 1.0, 0.0
        res.setdefault("chosen", {})[e] = chosen
    res["merges"], res["retention"] = {}, {}
    for name, state in merges(base, experts, moments, thresholds, sal).items():
        s = score(state)
        res["merges"][name] = s
        gains = [gain_ratio(s[t], res["base"][t], res["experts"][e][t]) for e, t in tasks.items()]
        res["retention"][name] = round(sum(gains) / len(gains), 3)
    res["own_gain"] = {e: round(res["experts"][e][t] - res["base"][t], 3) for e, t in tasks.items()}
    res["time"] = {"training": round(t_train, 1), "total": round(time.time() - t0, 1)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--set", action="append", default=[], help="demo.KEY.SUB=VALUE (YAML value)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", required=True)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    for s in args.set:
        _set(cfg["demo"], s)
    res = run(cfg, args.seed, args.work, args.threads)
    print(json.dumps({"label": args.label, "seed": args.seed, "set": args.set, **res}))


if __name__ == "__main__":
    main()
