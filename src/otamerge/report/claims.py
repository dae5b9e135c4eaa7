"""The paper's claims, one row each, measured on a run's own files over its seeds.

Each row is one test: a paired difference (or a measure) over seeds, its mean with the
95% Student t interval, and a verdict against a margin fixed here before any run:
``holds`` where the interval lies on the claim's side of the margin, ``does not hold``
where it lies on the other side, ``not separated`` where it straddles the margin or
fewer than three seeds give no t interval, ``not measured`` where the run lacks what the
test needs (a merge, a density sweep, a graft).

Retention rows read the headline backend and metric of ``retention_by_seed.csv``
(builtin exact match where there is one); graft rows read ``sweep.csv``'s own-task
scores on the same metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from otamerge.ffg.densities import density_label
from otamerge.io.atomic import atomic_file
from otamerge.report.intervals import T95, Interval, describe, interval
from otamerge.report.mask_claims import concentration, curvature_overlap, low_rank, mask_rank_share, mean_overlap
from otamerge.report.retention import LEADING
from otamerge.report.verdicts import COLUMNS, Row, above, absent, below, every
from otamerge.workflow.layout import graft_name, graft_statistics

RANK1_MARGIN = 0.02    # rank-1 moments "keep" OTA+FFG's retention: at most 0.02 below it
ROBUST_MARGIN = 0.05   # "robust across sparsity": best and worst density within 0.05 of retention


def _cell(iv: Interval) -> str:
    return f"{iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]" if iv.kind == T95 else f"{iv.mean:+.3f}"


def headline(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Seed x merge retention on the headline backend and metric (builtin exact match first)."""
    pairs = list(dict.fromkeys(zip(by_seed.backend, by_seed.metric)))
    if not pairs:
        return pd.DataFrame()
    backend, metric = next((p for p in LEADING if p in pairs), pairs[0])
    sel = by_seed[(by_seed.backend == backend) & (by_seed.metric == metric)]
    return sel.pivot_table(index="seed", columns="merge", values="retention", dropna=False)


def _missing(wide: pd.DataFrame, merges: Sequence[str]) -> str:
    lacking = [m for m in merges if m not in wide.columns]
    return f"no merge {', '.join(lacking)} in this run" if lacking else ""


def ordering(wide: pd.DataFrame, m: Mapping[str, str]) -> list[Row]:
    """(a) OTA+FFG > TIES > Fisher merging: two paired differences of retention."""
    rows = []
    for claim, hi, lo, text in (("a1", "ota_ffg", "ties", "OTA+FFG keeps more of the experts' gains than TIES"),
                                ("a2", "ties", "fisher", "TIES keeps more than Fisher merging")):
        measure = f"retention {m[hi]} - {m[lo]}, paired by seed"
        why = _missing(wide, [m[hi], m[lo]])
        if why:
            rows.append(absent(claim, text, measure, why))
            continue
        iv = interval(wide[m[hi]] - wide[m[lo]])
        rows.append(Row(claim, text, measure, iv, 0.0, above(iv, 0.0)))
    return rows


def rank1_keeps(wide: pd.DataFrame, m: Mapping[str, str]) -> Row:
    """(c) rank-1 moments keep OTA+FFG's result: at most RANK1_MARGIN below it."""
    text = "rank-1 moments keep OTA+FFG's result"
    measure = f"retention {m['rank1']} - {m['ota_ffg']}, paired by seed"
    why = _missing(wide, [m["rank1"], m["ota_ffg"]])
    if why:
        return absent("c", text, measure, why)
    iv = interval(wide[m["rank1"]] - wide[m["ota_ffg"]])
    return Row("c", text, measure, iv, -RANK1_MARGIN, above(iv, -RANK1_MARGIN))


def sweep_points(by_seed: pd.DataFrame, merge: str) -> dict[str, str]:
    """density label -> merge name of each point of ``merge``'s density sweep, densities rising."""
    pts = by_seed[(by_seed.method == merge) & by_seed.density.notna()]
    found = {density_label(d): name for name, d in zip(pts["merge"], pts.density)}
    return dict(sorted(found.items(), key=lambda kv: float(kv[0])))


def interference(wide: pd.DataFrame, by_seed: pd.DataFrame, m: Mapping[str, str]) -> Row:
    """(f) FFG reduces interference: OTA+FFG above OTA without masks, at every density of
    OTA+FFG's sweep (and as configured)."""
    text = "FFG reduces interference: OTA+FFG above OTA without masks at every density"
    points = {"as configured": m["ota_ffg"], **sweep_points(by_seed, m["ota_ffg"])}
    measure = f"retention {m['ota_ffg']}[@density] - {m['ota']}, paired by seed"
    why = _missing(wide, [m["ota"], *points.values()])
    if why:
        return absent("f", text, measure, why)
    ivs = {d: interval(wide[name] - wide[m["ota"]]) for d, name in points.items()}
    detail = "; ".join(f"{d}: {_cell(iv)}" for d, iv in ivs.items())
    worst = min(ivs.values(), key=lambda iv: iv.mean)
    return Row("f", text, measure + " (the worst point shown)", worst, 0.0,
               every(above(iv, 0.0) for iv in ivs.values()), detail)


def robustness(wide: pd.DataFrame, by_seed: pd.DataFrame, m: Mapping[str, str]) -> Row:
    """(g) robust across sparsity: the best and the worst density of OTA+FFG's sweep (by
    mean retention) within ROBUST_MARGIN, paired by seed."""
    text = "OTA+FFG is robust across sparsity levels"
    measure = f"retention of {m['ota_ffg']} at its best density - at its worst, paired by seed"
    points = sweep_points(by_seed, m["ota_ffg"])
    if len(points) < 2:
        return absent("g", text, measure, f"{m['ota_ffg']} has no density sweep of 2 or more points "
                                           f"(merges.{m['ota_ffg']}.densities)")
    means = {d: wide[name].mean() for d, name in points.items()}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    iv = interval(wide[points[best]] - wide[points[worst]])
    detail = "; ".join(f"{d}: {v:.3f}" for d, v in means.items())
    return Row("g", text, f"{measure} ({best} vs {worst})", iv, ROBUST_MARGIN, below(iv, ROBUST_MARGIN),
               f"mean retention by density: {detail}")


def graft_gap(sweep: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Seed x density: mean over experts of the own-task score of the FFG graft minus the
    magnitude graft at the same density."""
    s = sweep[(sweep.metric == metric) & sweep.ffg_metric.isin(["fisher", "magnitude"])]
    wide = s.pivot_table(index=["seed", "expert", "density"], columns="ffg_metric", values="score")
    if not {"fisher", "magnitude"} <= set(wide.columns):
        return pd.DataFrame()
    gap = (wide["fisher"] - wide["magnitude"]).groupby(["seed", "density"]).mean()
    return gap.unstack("density")


def grafting(sweep: pd.DataFrame, metric: str) -> list[Row]:
    """(b) FFG beats magnitude grafting (at every swept density), most at high sparsity
    (the gap at the smallest density above the gap at the next)."""
    gap = graft_gap(sweep, metric)
    text1 = "FFG grafts keep more of an expert's own-task score than magnitude grafts"
    text2 = "... most at high sparsity"
    m1 = f"own-task {metric} of the FFG graft - the magnitude graft, mean over experts, at each density"
    m2 = "that gap at the smallest density - at the next density, paired by seed"
    if gap.empty:
        why = "the FFG sweep lacks the fisher or the magnitude metric"
        return [absent("b1", text1, m1, why), absent("b2", text2, m2, why)]
    ivs = {d: interval(gap[d]) for d in gap.columns}
    detail = "; ".join(f"{density_label(d)}: {_cell(iv)}" for d, iv in ivs.items())
    worst = min(ivs.values(), key=lambda iv: iv.mean)
    rows = [Row("b1", text1, m1 + " (the smallest gap shown)", worst, 0.0, every(above(iv, 0.0) for iv in ivs.values()),
                detail)]
    if len(gap.columns) < 2:
        return rows + [absent("b2", text2, m2, "one swept density")]
    iv = interval(gap[gap.columns[0]] - gap[gap.columns[1]])
    return rows + [Row("b2", text2, f"{m2} ({density_label(gap.columns[0])} vs {density_label(gap.columns[1])})",
                       iv, 0.0, above(iv, 0.0))]


def chosen_statistics(thresholds_csv: str | Path, merge: str, ffg_metric: str, seed: int,
                      grafts: Mapping[str, str | Path]) -> dict[str, Path]:
    """expert -> statistics.json of its graft at the density ``merge`` chose at ``seed``.
    ``grafts`` maps graft model names (``ffg/<expert>/<metric>/<density>``) to their
    folders. The CSV's ``metric`` column is the saliency (``fisher`` for full and rank-1
    moments alike), so the graft is named by the merge's FFG metric. An expert kept whole
    (density 1: no swept density kept enough of its score) has no graft and is left out."""
    t = pd.read_csv(thresholds_csv)
    t = t[(t["merge"] == merge) & (t["seed"] == seed) & (t["density"] < 1)]
    return {r.expert: graft_statistics(grafts[graft_name(r.expert, ffg_metric, density_label(r.density))])
            for r in t.itertuples()}


@dataclass(frozen=True)
class SeedFiles:
    """One seed's models as the claims job reads them: the base's folder, each expert's
    moments file, and the folder of every candidate graft by its model name."""

    base: str
    moments: dict[str, str]
    grafts: dict[str, str]


def _numpy(t) -> np.ndarray:
    return t.float().numpy()


def measure(by_seed: pd.DataFrame, sweep: pd.DataFrame, thresholds_csv: str | Path | None,
            seeds: Mapping[int, SeedFiles], merges: Mapping[str, str], ffg_metric: str | None,
            metric: str) -> list[Row]:
    """Every claim's row from a run's tables and, per seed, its base, moments and grafts.
    ``merges``: the merge each claim reads by its role (ota_ffg, ties, fisher, rank1, ota;
    the config's ``claims``, defaults in the workflow's schema)."""
    from otamerge.curvature.moments import Moments  # torch: only here
    from otamerge.io.checkpoint import Checkpoint

    m = merges
    wide = headline(by_seed)
    rows = [*ordering(wide, m), rank1_keeps(wide, m), interference(wide, by_seed, m), robustness(wide, by_seed, m),
            *grafting(sweep, metric)]
    stats, ranks, overlap, n_layers = {}, {}, {}, 0
    for seed, files in seeds.items():
        base = Checkpoint(files.base, f"base of seed {seed}")
        n_layers = json.loads((Path(files.base) / "config.json").read_text())["num_hidden_layers"]
        chosen = (chosen_statistics(thresholds_csv, m["ota_ffg"], ffg_metric, seed, files.grafts)
                  if thresholds_csv and ffg_metric else {})
        stats[seed] = {e: json.loads(Path(f).read_text()) for e, f in chosen.items()}
        ranks[seed] = []
        for e, st in stats[seed].items():
            graft = Checkpoint(Path(chosen[e]).parent, f"graft of {e}")
            names = [n for n, t in st["tensors"].items() if len(t["shape"]) == 2]
            ranks[seed].append(mask_rank_share(lambda n: _numpy(base.get(n)), lambda n: _numpy(graft.get(n)),
                                               names, seed))
        moments = {e: Moments(f, f"moments of {e}") for e, f in files.moments.items()}
        matrices = [n for n in base.names() if base.dtype(n).is_floating_point and len(base.shape(n)) == 2]
        overlap[seed] = (mean_overlap(lambda e, n: _numpy(moments[e].get(n)), list(moments), matrices)
                         if len(moments) > 1 else math.nan)
    return rows + [low_rank(ranks), concentration(stats, n_layers), curvature_overlap(overlap)]


def write_claims(by_seed_csv: str | Path, sweep_csv: str | Path | None, thresholds_csv: str | Path | None,
                 seeds: Mapping[int, SeedFiles], merges: Mapping[str, str], ffg_metric: str | None, metric: str,
                 md: str | Path, csv: str | Path) -> pd.DataFrame:
    """claims.csv (COLUMNS) and claims.md from the run's own files."""
    by_seed = pd.read_csv(by_seed_csv)
    sweep = pd.read_csv(sweep_csv) if sweep_csv else pd.DataFrame(columns=["seed", "expert", "ffg_metric",
                                                                             "density", "metric", "score"])
    table = claims_table(measure(by_seed, sweep, thresholds_csv, seeds, merges, ffg_metric, metric))
    with atomic_file(csv) as fh:
        table.to_csv(fh, index=False, float_format="%.6g")
    text = claims_markdown(table, by_seed.seed.nunique())
    with atomic_file(md) as fh:
        fh.write(text)
    print(text)
    return table


def claims_table(rows: Sequence[Row]) -> pd.DataFrame:
    order = ["a1", "a2", "b1", "b2", "c", "d1", "d2", "e", "f", "g"]
    return pd.DataFrame([r.record() for r in sorted(rows, key=lambda r: order.index(r.claim))], columns=COLUMNS)


def claims_markdown(table: pd.DataFrame, n_seeds: int) -> str:
    shown = pd.DataFrame({
        "claim": table.claim, "the paper says": table.statement, "measured": table.measure,
        "mean [95% CI]": [("" if k == "none" else f"{m:.3f}" if k != T95 else f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
                          for m, lo, hi, k in zip(table["mean"], table.low, table.high, table.interval)],
        "margin": ["" if math.isnan(x) else f"{x:g}" for x in table.margin],
        "verdict": table.verdict, "detail": table.detail})
    return "\n".join([
        "# The paper's claims on this run", "",
        f"Each row one test over {n_seeds} seed(s): its mean with the {describe(T95)}, and a verdict against "
        "the margin: holds where the interval lies on the claim's side of it, does not hold where it lies on "
        "the other, not separated where it straddles it (or fewer than 3 seeds give no interval), not measured "
        "where the run lacks what the test needs. Margins are fixed in `otamerge/report/claims.py` and "
        "`mask_claims.py`, not tuned to a run.", "", shown.to_markdown(index=False, disable_numparse=True), ""])
