"""Normalised gain retention of merges (the field's "normalised accuracy").

For one seed and a merge of the expert set S:

    retention = mean over e in S of (merge[task(e)] - base[task(e)]) / (expert_e[task(e)] - base[task(e)])

1 keeps every expert's own-task gain over the base, 0 keeps none, below 0 loses ground.
An expert no better or worse than the base on its own task (zero gain) makes the ratio
undefined: that seed's retention of every merge holding it is NaN, and the mean over
seeds leaves it out (``n_seeds`` counts the seeds that have one), rather than averaging
over the other experts and so reporting a number about a different set.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from otamerge.report.intervals import T95, Interval, interval
from otamerge.workflow.layout import merge_name
from otamerge.workflow.subsets import ALL, MergeInfo

# density: the point of a merge's density sweep (``ota_ffg@0.05``), empty for other merges
KEYS = ["merge", "method", "subset", "subset_size", "density"]
BY_SEED = [*KEYS, "seed", "backend", "metric", "retention"]
AGGREGATE = [*KEYS, "backend", "metric", "mean", "low", "high", "n_seeds", "interval"]
BY_SIZE = ["method", "subset_size", "n_subsets", "backend", "metric", "mean", "low", "high", "n_seeds", "interval"]
# the headline first: builtin exact match, then its graded view
LEADING = [("builtin", "exact_match"), ("builtin", "token_accuracy")]


def gain_ratio(merged: float, base: float, expert: float) -> float:
    """Share of an expert's own-task gain over the base that a merge keeps (NaN at zero gain)."""
    gain = expert - base
    return (merged - base) / gain if gain != 0 else math.nan


def merge_retention(score: Mapping[tuple[str, str], float], merge: str, experts: Sequence[str],
                    tasks: Mapping[str, str | None]) -> float:
    """Retention of one merge from ``score[(model, task)]`` of one seed, backend and metric
    (models named as in the score tables: ``base``, the expert, ``merge/<merge>``); NaN
    when an expert has no own task or a score is missing."""
    ratios = []
    for e in experts:
        t = tasks.get(e)
        keys = [(merge_name(merge), t), ("base", t), (e, t)]
        if t is None or any(k not in score for k in keys):
            return math.nan
        ratios.append(gain_ratio(*(score[k] for k in keys)))
    return sum(ratios) / len(ratios)


def _order(pairs) -> list[tuple[str, str]]:
    """(backend, metric) pairs with the headline ones first, the rest in their order."""
    pairs = list(dict.fromkeys(pairs))
    return [p for p in LEADING if p in pairs] + [p for p in pairs if p not in LEADING]


def retention_by_seed(scores: pd.DataFrame, merges: Mapping[str, MergeInfo],
                      tasks: Mapping[str, str | None]) -> pd.DataFrame:
    """One row per merge, seed, backend and metric (columns BY_SEED), for every backend
    and metric that scores the base on each expert's own task (perplexity of held-out
    text, for one, is not a task score)."""
    own = {t for t in tasks.values() if t is not None}
    rows = []
    for backend, metric in _order(zip(scores.backend, scores.metric)):
        sel = scores[(scores.backend == backend) & (scores.metric == metric)]
        if not own or not own <= set(sel[sel.model == "base"].task):
            continue
        for seed, g in sel.groupby("seed", sort=True):
            score = {(m, t): s for m, t, s in zip(g.model, g.task, g.score)}
            rows += [{"merge": i.name, "method": i.configured, "subset": i.subset, "subset_size": i.size,
                      "density": float(i.density) if i.density else math.nan, "seed": seed,
                      "backend": backend, "metric": metric,
                      "retention": merge_retention(score, i.name, i.experts, tasks)} for i in merges.values()]
    return pd.DataFrame(rows, columns=BY_SEED)


def _with_interval(row: dict, iv: Interval) -> dict:
    return {**row, "mean": iv.mean, "low": iv.low, "high": iv.high, "n_seeds": iv.n, "interval": iv.kind}


def aggregate(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each merge's retention with its interval (columns AGGREGATE)."""
    rows = [_with_interval(dict(zip([*KEYS, "backend", "metric"], k)), interval(g.retention))
            for k, g in by_seed.groupby([*KEYS, "backend", "metric"], sort=False, dropna=False)]
    return pd.DataFrame(rows, columns=AGGREGATE)


def by_size(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean retention per method and subset size (columns BY_SIZE): at each seed the mean
    over that size's subsets (NaN if one of them is undefined), then the mean over seeds
    with its interval. The merge of all experts is its own size. Rows in the order of
    ``by_seed`` (headline backend and metric first, methods in config order), sizes rising.
    The points of a density sweep are left out (each is its own setting of a method)."""
    rows = []
    by_seed = by_seed[by_seed.density.isna()]
    for (backend, metric, method), g in by_seed.groupby(["backend", "metric", "method"], sort=False):
        for size, s in sorted(g.groupby("subset_size"), key=lambda kv: kv[0]):
            per_seed = s.groupby("seed").retention.agg(lambda r: r.mean(skipna=False))
            row = {"method": method, "subset_size": size, "n_subsets": s["merge"].nunique(), "backend": backend,
                   "metric": metric}
            rows.append(_with_interval(row, interval(per_seed)))
    return pd.DataFrame(rows, columns=BY_SIZE)


def merges_of_all(table: pd.DataFrame) -> pd.DataFrame:
    """The configured merges of all their experts (no subset, no point of a density sweep)."""
    return table[(table.subset == ALL) & table.density.isna()]


def density_points(table: pd.DataFrame) -> pd.DataFrame:
    """The points of the merges' density sweeps."""
    return table[table.density.notna()]


STEPS = ["backend", "metric", "merge", "next_merge", "mean", "low", "high", "n_seeds", "interval", "separated"]


def ranking_steps(by_seed: pd.DataFrame, agg: pd.DataFrame) -> pd.DataFrame:
    """Each step of the ranking of the merges of all experts (best first by mean): the
    difference in retention between a merge and the next one, paired by seed (both are
    measured against that seed's base and experts), with its interval over seeds.
    ``separated``: a Student t interval that excludes 0."""
    rows = []
    for (backend, metric), g in merges_of_all(agg).groupby(["backend", "metric"], sort=False):
        order = list(g.sort_values("mean", ascending=False)["merge"])
        sel = by_seed[(by_seed.backend == backend) & (by_seed.metric == metric)]
        wide = sel.pivot_table(index="seed", columns="merge", values="retention", dropna=False)
        for a, b in zip(order, order[1:]):
            iv = interval(wide[a] - wide[b])
            row = {"backend": backend, "metric": metric, "merge": a, "next_merge": b}
            rows.append({**_with_interval(row, iv), "separated": iv.kind == T95 and (iv.low > 0 or iv.high < 0)})
    return pd.DataFrame(rows, columns=STEPS)
