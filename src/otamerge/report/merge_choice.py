"""Choosing a merge's FFG density by the merge itself, on a validation split.

``thresholds.mode: auto`` picks each expert's density from its own graft's score. A merge
with a density sweep (``merges.<m>.densities``) has one merged model per density; the
merge-level choice takes the density whose merged model keeps the most of the experts'
gain on validation prompts, which are disjoint from the test prompts every table reports
(``otamerge.families.validation_set``), so no test prompt chooses a setting. An expert
whose task has no validation prompt (the demo's facts: its whole table is the test set),
or who scores there no better than the base, is left out of the validation retention.
Ties go to the smallest density.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from otamerge.io.atomic import atomic_file
from otamerge.report.intervals import T95, describe, interval
from otamerge.report.retention import merge_retention

COLUMNS = ["merge", "seed", "density", "validation_retention", "test_retention", "configured_test_retention"]


def validation_retention(rows: pd.DataFrame, points: Mapping[str, str], experts: Sequence[str],
                         tasks: Mapping[str, str], metric: str) -> dict[str, float]:
    """density label -> retention of that point's merged model on the validation rows of
    one seed (columns model, task, metric, score), over the experts whose own task has
    validation scores and who gained on it (a ratio to a zero gain is undefined)."""
    sel = rows[rows.metric == metric]
    score = {(m, t): s for m, t, s in zip(sel.model, sel.task, sel.score)}
    scored = [e for e in experts if ("base", tasks[e]) in score and (e, tasks[e]) in score
              and score[(e, tasks[e])] != score[("base", tasks[e])]]
    if not scored:
        return {d: math.nan for d in points}
    return {d: merge_retention(score, name, scored, tasks) for d, name in points.items()}


def chosen_density(retention: Mapping[str, float]) -> str:
    """The density whose merged model keeps the most (ties: the smallest density)."""
    finite = {d: r for d, r in retention.items() if math.isfinite(r)}
    if not finite:
        raise ValueError("no sweep point has a validation retention (no validation prompts of the experts' tasks)")
    return min(finite, key=lambda d: (-finite[d], float(d)))


def choice_table(validation: pd.DataFrame, by_seed: pd.DataFrame, points: Mapping[str, Mapping[str, str]],
                 experts: Mapping[str, Sequence[str]], tasks: Mapping[str, str], metric: str,
                 test_metric: str = "exact_match") -> pd.DataFrame:
    """Per merge with a density sweep and seed: the density its validation retention
    chooses, that retention, the test retention of the chosen point, and the test
    retention of the merge as configured (an FFG merge under ``thresholds.mode: auto``:
    automatic per-expert densities), both on the builtin ``test_metric``."""
    test = by_seed[(by_seed.backend == "builtin") & (by_seed.metric == test_metric)]
    test = {(m, s): r for m, s, r in zip(test["merge"], test.seed, test.retention)}
    rows = []
    for merge, pts in points.items():
        for seed, g in validation.groupby("seed", sort=True):
            val = validation_retention(g, pts, experts[merge], tasks, metric)
            d = chosen_density(val)
            rows.append({"merge": merge, "seed": seed, "density": float(d), "validation_retention": val[d],
                         "test_retention": test.get((pts[d], seed), math.nan),
                         "configured_test_retention": test.get((merge, seed), math.nan)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(values: Iterable[float]) -> str:
    iv = interval(values)
    return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]" if iv.kind == T95 else f"{iv.mean:.3f}"


def choice_markdown(table: pd.DataFrame, metric: str) -> str:
    lines = ["# FFG density chosen by the merge", "",
             f"Per merge with a density sweep: the density whose merged model keeps the most of the experts' gain "
             f"({metric}) on validation prompts disjoint from the test prompts, per seed; the test retention "
             f"(builtin exact match) of that merged model, next to the merge as configured (an FFG merge under "
             f"`thresholds.mode: auto`: each expert's own automatic density), and their difference paired by seed. "
             f"Mean [{describe(T95)} from 3 seeds].",
             ""]
    rows = []
    for merge, g in table.groupby("merge", sort=False):
        rows.append({"merge": merge, "densities chosen (by seed)": ", ".join(f"{d:g}" for d in g.density),
                     "validation retention": _cell(g.validation_retention),
                     "test retention, chosen by the merge": _cell(g.test_retention),
                     "test retention, as configured": _cell(g.configured_test_retention),
                     "chosen - configured": _cell(g.test_retention - g.configured_test_retention)})
    return "\n".join(lines + [pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""])


def write_merge_choice(validation_files: Iterable[str | Path], by_seed_csv: str | Path,
                       points: Mapping[str, Mapping[str, str]], experts: Mapping[str, Sequence[str]],
                       tasks: Mapping[str, str], metric: str, md: str | Path, csv: str | Path) -> pd.DataFrame:
    from otamerge.report.summary import load_scores

    table = choice_table(load_scores(validation_files), pd.read_csv(by_seed_csv), points, experts, tasks, metric)
    with atomic_file(csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6g")
    text = choice_markdown(table, metric)
    with atomic_file(md) as fh:
        fh.write(text)
    print(text)
    return table
