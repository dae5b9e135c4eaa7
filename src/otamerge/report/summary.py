"""Summary of evaluation results over seeds: a tidy score table, per-metric model x task
matrices (mean over seeds with an interval), the FFG sweep, and the merges' gain retention.

Score files live in per-seed folders (``otamerge.workflow.layout``); every row read gets the seed
of its file, so the tables can average over seeds and show how far seeds disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from otamerge.report import retention as ret
from otamerge.io.atomic import atomic_file, write_json
from otamerge.ffg.densities import density_label
from otamerge.evaluation.tidy import COLUMNS
from otamerge.report.intervals import MIN_MAX, MIN_SEEDS_FOR_T, T95, describe, interval
from otamerge.workflow.layout import graft_name, seed_of
from otamerge.workflow.subsets import ALL, MergeInfo

SCORE_COLUMNS = [*COLUMNS, "seed"]


def load_scores(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All score rows of the given JSON files as one tidy table, each with the seed of
    its file's per-seed folder."""
    rows = []
    for path in paths:
        seed = seed_of(path)
        with open(path) as fh:
            rows += [{**r, "seed": seed} for r in json.load(fh)]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _kind(model: str) -> int:
    """Row groups of the paper's main table: base and experts, grafted experts, merges."""
    return 2 if model.startswith("merge/") else 1 if model.startswith("ffg/") else 0


def _seed_matrix(sel: pd.DataFrame, models: list[str], columns: list[str]) -> pd.DataFrame:
    m = sel.pivot_table(index="model", columns="task", values="score").reindex(index=models, columns=columns)
    m["average"] = m.mean(axis=1)
    return m


def matrix_over_seeds(scores: pd.DataFrame, metric: str, tasks: Sequence[str],
                      backend: str | None = None) -> dict[str, pd.DataFrame]:
    """Rows: models (base and experts, grafts, merges, each in order of appearance);
    columns: the backend's tasks (in the order of ``tasks``, then any others), then their
    average at each seed. Returns tables ``mean``, ``low``, ``high`` (the interval over
    seeds of each cell, see otamerge.report.intervals) and ``n`` (seeds with a value)."""
    sel = scores[scores.metric == metric]
    if backend is not None:
        sel = sel[sel.backend == backend]
    models = sorted(dict.fromkeys(sel.model), key=_kind)
    present = list(dict.fromkeys(sel.task))
    columns = [t for t in tasks if t in present] + [t for t in present if t not in tasks]
    per_seed = [_seed_matrix(g, models, columns) for _, g in sel.groupby("seed", sort=True)]
    out = {k: pd.DataFrame(index=models, columns=[*columns, "average"], dtype=float)
           for k in ("mean", "low", "high", "n")}
    for model in models:
        for col in out["mean"].columns:
            iv = interval(m.at[model, col] for m in per_seed)
            for k, v in (("mean", iv.mean), ("low", iv.low), ("high", iv.high), ("n", iv.n)):
                out[k].at[model, col] = v
    return out


def _cell(mean: float, low: float, high: float, n: int, digits: int = 3) -> str:
    """``mean [low, high]``; the value alone from one seed, nothing from none."""
    if math.isnan(mean):
        return ""
    if n <= 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _cells(t: pd.DataFrame) -> list[str]:
    """``_cell`` of each row of a table with mean, low, high and n_seeds columns."""
    return [_cell(*v) for v in zip(t["mean"], t.low, t.high, t.n_seeds)]


def _interval_note(n_seeds: int) -> str:
    return (f"Mean over {n_seeds} seeds [interval: {describe(T95)} where a value has {MIN_SEEDS_FOR_T} or more "
            f"seeds, else {describe(MIN_MAX)}].")


def matrix_markdown(tables: dict[str, pd.DataFrame], n_seeds: int) -> str:
    """One seed: the means as numbers. Several: ``mean [low, high]`` per cell and a
    ``seeds`` column (grafts can differ in density from seed to seed, so a graft row may
    hold fewer seeds)."""
    if n_seeds == 1:
        return tables["mean"].to_markdown(floatfmt=".3f")
    shown = pd.DataFrame({c: [_cell(*v) for v in zip(tables["mean"][c], tables["low"][c], tables["high"][c],
                                                     tables["n"][c])]
                          for c in tables["mean"].columns}, index=tables["mean"].index)
    shown["seeds"] = tables["n"].max(axis=1).astype(int)
    return f"{_interval_note(n_seeds)}\n\n{shown.to_markdown(disable_numparse=True)}"


def chosen_grafts(scores: pd.DataFrame, threshold_files: dict[str, str]) -> pd.DataFrame:
    """Score rows of each expert grafted at the density its merges chose at that seed
    (model ``ffg/<expert>/<ffg metric>/<density>``), once per graft and seed.
    ``threshold_files`` maps each merge's thresholds.csv (in its seed's folder) to its FFG
    metric (fisher, fisher_rank1): the CSV's ``metric`` column is the saliency, which is
    ``fisher`` for both."""
    chosen = set()
    for f, ffg_metric in threshold_files.items():
        seed = seed_of(f)
        for row in pd.read_csv(f).itertuples():
            chosen.add((seed, graft_name(row.expert, ffg_metric, density_label(row.density))))
    return scores[pd.Series([(s, m) in chosen for s, m in zip(scores.seed, scores.model)], index=scores.index,
                            dtype=bool)]


def write_summary(inputs: Iterable[str | Path], tasks: Sequence[str], scores: str | Path,
                  table: str | Path, matrix_json: str | Path, graft_scores: Iterable[str | Path] = (),
                  threshold_files: dict[str, str] | None = None) -> pd.DataFrame:
    """Write the tidy CSV (SCORE_COLUMNS; by seed: base, experts, experts grafted at their
    chosen density, merges), a Markdown table per backend and metric like the paper's main
    table (mean over seeds, with its interval), and the means as JSON."""
    df = load_scores(inputs)
    grafts = chosen_grafts(load_scores(graft_scores), threshold_files or {})
    merged = df.model.str.startswith("merge/")
    blocks = [part[part.seed == s] for s in sorted(set(df.seed)) for part in (df[~merged], grafts, df[merged])]
    df = pd.concat(blocks, ignore_index=True)[SCORE_COLUMNS]
    with atomic_file(scores) as fh:
        df.to_csv(fh, index=False, float_format="%.6g")
    n_seeds = df.seed.nunique()
    md, js = [], {}
    for backend in dict.fromkeys(df.backend):
        for metric in dict.fromkeys(df[df.backend == backend].metric):
            tables = matrix_over_seeds(df, metric, tasks, backend)
            md += [f"## {metric} ({backend})", "", matrix_markdown(tables, n_seeds), ""]
            js.setdefault(backend, {})[metric] = json.loads(tables["mean"].to_json(orient="index"))
    with atomic_file(table) as fh:
        fh.write("\n".join(md))
    write_json(matrix_json, js)
    print("\n".join(md))
    return df


def sweep_table(scores: pd.DataFrame, tasks: dict[str, str]) -> pd.DataFrame:
    """Own-task scores of grafted experts: columns seed, expert, ffg_metric, density,
    metric, score; from score rows whose model is ``ffg/<expert>/<metric>/<density>``."""
    ffg = scores[scores.model.str.startswith("ffg/")].copy()
    parts = ffg.model.str.split("/", expand=True)
    ffg["expert"], ffg["ffg_metric"], ffg["density"] = parts[1], parts[2], parts[3].astype(float)
    own = ffg[ffg.task == ffg.expert.map(tasks)]
    return own[["seed", "expert", "ffg_metric", "density", "metric", "score"]].sort_values(
        ["metric", "expert", "ffg_metric", "density", "seed"])


def write_sweep(score_files: Iterable[str | Path], thresholds: Mapping[str, str], tasks: dict[str, str],
                sweep_md: str | Path, sweep_csv: str | Path, thresholds_csv: str | Path) -> pd.DataFrame:
    """The FFG sweep (sweep.csv: one row per seed; sweep.md: expert x metric -> own-task
    score per density, mean over seeds) and the thresholds every FFG merge chose at each
    seed (``thresholds`` maps each merge's thresholds.csv to the merge's name)."""
    table = sweep_table(load_scores(score_files), tasks)
    with atomic_file(sweep_csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6g")
    n_seeds = table.seed.nunique()
    over = f" (mean over {n_seeds} seeds)" if n_seeds > 1 else ""
    md = []
    for metric in dict.fromkeys(table.metric):
        sel = table[table.metric == metric]
        wide = sel.pivot_table(index=["expert", "ffg_metric"], columns="density", values="score")
        mean = sel.pivot_table(index="ffg_metric", columns="density", values="score")
        md += [f"## own-task {metric} of grafted experts{over}", "", wide.to_markdown(floatfmt=".3f"), "",
               f"mean over experts ({metric}):", "", mean.to_markdown(floatfmt=".3f"), ""]
    with atomic_file(sweep_md) as fh:
        fh.write("\n".join(md))
    frames = []
    for f, merge in thresholds.items():
        t = pd.read_csv(f)
        if len(t):
            frames.append(t.assign(merge=merge, seed=seed_of(f)))
    chosen = pd.concat(frames) if frames else pd.DataFrame(columns=["merge", "seed"])
    with atomic_file(thresholds_csv) as fh:
        chosen.to_csv(fh, index=False)
    print("\n".join(md))
    return table


def merge_infos(merges: Mapping[str, Mapping]) -> dict[str, MergeInfo]:
    """MergeInfo from the plain values the workflow passes (configured merge, subset, experts)."""
    return {name: MergeInfo(name, m["configured"], m["subset"], tuple(m["experts"]), m.get("density"))
            for name, m in merges.items()}


def _retention_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Markdown view of AGGREGATE rows: the merge, retention with its interval."""
    return pd.DataFrame({"merge": table["merge"].values,
                         "experts": table.subset_size.values,
                         "retention": _cells(table),
                         "seeds": table.n_seeds.values,
                         "interval": [describe(k) for k in table.interval]})


def density_markdown(agg: pd.DataFrame) -> list[str]:
    """Lines of a table of one backend and metric's AGGREGATE rows: each merge with a
    density sweep, its retention at every density and as configured (FFG merges: each
    expert at its own chosen density); nothing without a sweep."""
    points = ret.density_points(agg)
    if points.empty:
        return []
    wide = points.assign(cell=_cells(points)).pivot(index="method", columns="density", values="cell")
    wide.columns = [f"density {density_label(c)}" for c in wide.columns]
    configured = ret.merges_of_all(agg).set_index("merge")
    configured = configured.assign(cell=_cells(configured))
    wide["as configured"] = [configured.cell.get(m, "") for m in wide.index]
    backend, metric = agg.backend.iloc[0], agg.metric.iloc[0]
    return [f"## {metric} ({backend}): retention against density", "",
            "One merged model per density of each merge's sweep (`<merge>@<density>`: FFG merges graft every "
            "expert at that density, the others take it as their `density`); `as configured`: the merge itself.",
            "", wide.reindex(index=list(dict.fromkeys(points.method))).fillna("").to_markdown(disable_numparse=True),
            ""]


def retention_markdown(agg: pd.DataFrame, sizes: pd.DataFrame, n_seeds: int, steps: pd.DataFrame) -> str:
    """Per backend and metric (builtin exact match first): merges of all experts, best
    first, and whether each step of that ranking is separated; mean retention per method
    and subset size; every subset merge."""
    if agg.empty:
        return ("# Gain retention\n\nNo backend scores the base on every expert's own task, so no retention "
                "(set each expert's task).\n")
    md = ["# Gain retention of the merges", "",
          "retention = mean over the merged experts e of (merge - base) / (expert e - base), each on e's own "
          "task, at one seed: 1 keeps every expert's gain over the base, 0 keeps none. "
          f"Mean over {n_seeds} seed(s) [interval: {describe(T95)} from {MIN_SEEDS_FOR_T} seeds, "
          f"{describe(MIN_MAX)} below]. A seed where an expert scores the same as the base on its own task "
          "gives no value (`seeds` counts those that do).", ""]
    for (backend, metric), g in agg.groupby(["backend", "metric"], sort=False):
        whole = ret.merges_of_all(g).sort_values("mean", ascending=False, na_position="last")
        md += [f"## {metric} ({backend}): merges of all experts", "",
               _retention_rows(whole).to_markdown(index=False, disable_numparse=True), ""]
        st = steps[(steps.backend == backend) & (steps.metric == metric)]
        if len(st) and n_seeds > 1:
            table = pd.DataFrame({"merge": st["merge"], "next in the ranking": st.next_merge,
                                  "difference (paired by seed)": _cells(st),
                                  "separated": ["yes" if x else "no" for x in st.separated]})
            md += ["Each step of the ranking: retention of a merge minus the next one's, paired by seed; "
                   f"separated where the {describe(T95)} excludes 0.", "",
                   table.to_markdown(index=False, disable_numparse=True), ""]
        md += density_markdown(g)
        subsets = g[g.subset != ALL]
        if subsets.empty:
            continue
        s = sizes[(sizes.backend == backend) & (sizes.metric == metric)]
        wide = s.assign(cell=_cells(s)).pivot(
            index="method", columns="subset_size", values="cell").reindex(index=list(dict.fromkeys(s.method)))
        wide.columns = [f"{c} experts" for c in wide.columns]
        md += [f"## {metric} ({backend}): mean retention by subset size", "",
               "Per seed the mean over the subsets of a size, then over seeds.", "",
               wide.fillna("").to_markdown(disable_numparse=True), "",
               f"## {metric} ({backend}): subsets", "",
               _retention_rows(subsets).to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(md)


def write_retention(score_files: Iterable[str | Path], merges: Mapping[str, Mapping],
                    tasks: Mapping[str, str | None], table: str | Path, csv: str | Path, by_size_csv: str | Path,
                    by_seed_csv: str | Path) -> pd.DataFrame:
    """Retention of every merge at every seed (by_seed_csv), its mean over seeds with the
    interval (csv, and the Markdown table), and the mean per method and subset size; from
    the score files of the base, the experts and the merges (at full precision)."""
    scores = load_scores(score_files)
    by_seed = ret.retention_by_seed(scores, merge_infos(merges), tasks)
    agg, sizes = ret.aggregate(by_seed), ret.by_size(by_seed)
    for frame, path in ((by_seed, by_seed_csv), (agg, csv), (sizes, by_size_csv)):
        with atomic_file(path) as fh:
            frame.to_csv(fh, index=False, float_format="%.6g")
    md = retention_markdown(agg, sizes, scores.seed.nunique(), ret.ranking_steps(by_seed, agg))
    with atomic_file(table) as fh:
        fh.write(md)
    print(md)
    return agg
