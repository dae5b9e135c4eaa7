"""Figures of a run (PNG, for the report): FFG sweep curves, merge comparison (gain
retention first), where FFG keeps edits (layer x role), a mask rank proxy per role, and
curvature overlap between experts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from otamerge.report import retention as ret  # noqa: E402
from otamerge.report.mask_claims import top_overlap  # noqa: E402
from otamerge.report.intervals import NONE, describe  # noqa: E402
from otamerge.report.sites import ROLES, layer_of, role_of  # noqa: E402
from otamerge.workflow.subsets import ALL  # noqa: E402

def _save(fig, out: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _grid(n: int, width: float = 3.6, height: float = 3.0):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def sweep_curves(sweep_csv: str | Path, out: str | Path, score_metric: str) -> None:
    """Own-task score vs density (mean over seeds), one panel per expert, one line per FFG metric."""
    t = pd.read_csv(sweep_csv)
    t = t[t.metric == score_metric]
    experts = list(dict.fromkeys(t.expert))
    fig, axes = _grid(len(experts))
    for ax, e in zip(axes, experts):
        for metric, g in t[t.expert == e].groupby("ffg_metric"):
            g = g.groupby("density", as_index=False).score.mean()
            ax.plot(g.density, g.score, marker="o", label=metric)
        ax.set_xscale("log")
        ticks = sorted(set(t.density))
        ax.set_xticks(ticks, [f"{d:g}" for d in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_title(e)
        ax.set_xlabel("density (fraction kept)")
        ax.set_ylabel(f"own-task {score_metric}")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, out)


def _error_bars(t: pd.DataFrame) -> np.ndarray:
    """xerr of each row's interval around its mean (0 where there is none)."""
    return np.nan_to_num(np.vstack([t["mean"] - t.low, t.high - t["mean"]]))


def _interval_label(t: pd.DataFrame) -> str:
    kinds = sorted(set(t.interval) - {NONE})
    return ", ".join(describe(k) for k in kinds) or "no interval"


def _retention_panel(ax, t: pd.DataFrame, metric: str, backend: str) -> None:
    """Retention of each merge of all experts (bars, best on top) with its interval."""
    t = t.sort_values("mean", na_position="first")
    ax.barh(list(t["merge"]), t["mean"].fillna(0), xerr=_error_bars(t), color="tab:blue", capsize=3)
    for y, (m, high) in enumerate(zip(t["mean"], t.high)):  # the value right of its interval
        ax.annotate("n/a" if np.isnan(m) else f"{m:.2f}", (0 if np.isnan(high) else max(high, 0), y),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.axvline(0, color="black", lw=1)
    ax.axvline(1, color="black", lw=1, linestyle="--", label="every expert's gain kept")
    n = int(t.n_seeds.max()) if len(t) else 0
    ax.set_xlabel(f"gain retention, {metric} ({backend}); mean over {n} seed(s), bars: {_interval_label(t)}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)


def _size_panel(ax, sizes: pd.DataFrame) -> None:
    """Mean retention per method (groups) and subset size (bars) with their intervals."""
    methods = list(dict.fromkeys(sizes.method))
    all_sizes = sorted(set(sizes.subset_size))
    width = 0.8 / len(all_sizes)
    for i, size in enumerate(all_sizes):
        s = sizes[sizes.subset_size == size].set_index("method").reindex(methods)
        ax.barh(np.arange(len(methods)) + i * width, s["mean"].fillna(0), width, xerr=_error_bars(s), capsize=2,
                label=f"{size} experts")
    ax.set_yticks(np.arange(len(methods)) + 0.4 - width / 2, methods, fontsize=8)
    ax.axvline(0, color="black", lw=1)
    ax.axvline(1, color="black", lw=1, linestyle="--")
    ax.set_xlabel(f"mean gain retention by number of experts merged; bars: {_interval_label(sizes)}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)


def _average_panel(ax, scores: pd.DataFrame, merges_shown: set[str], score_metric: str, backend: str) -> None:
    """Average score over tasks per merge in ``merges_shown`` (bars; mean over seeds), the
    base and each expert as lines."""
    s = scores[(scores.metric == score_metric) & (scores.backend == backend)]
    avg = s.groupby(["model", "seed"], sort=False).score.mean().groupby("model", sort=False).mean()
    merges = avg[[m.startswith("merge/") and m.split("/", 1)[1] in merges_shown for m in avg.index]].sort_values()
    refs = avg[[not (m.startswith("merge/") or m.startswith("ffg/")) for m in avg.index]]
    ax.barh([m.split("/", 1)[1] for m in merges.index], merges.values, color="tab:gray")
    # the base in black; each expert its own colour (line styles alone repeat after four)
    colors = itertools.cycle(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    styles = itertools.cycle(["--", ":", "-."])
    for name, value in refs.items():
        base = name == "base"
        ax.axvline(value, color="black" if base else next(colors), linestyle="-" if base else next(styles), lw=1,
                   label=f"{name} ({value:.3f})")
    ax.set_xlabel(f"average {score_metric} over tasks of each merge of all experts (mean over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="references", title_fontsize=7)
    ax.grid(axis="x", alpha=0.3)


def method_comparison(retention_csv: str | Path, by_size_csv: str | Path, scores_csv: str | Path,
                      out: str | Path, score_metric: str, backend: str = "builtin",
                      metric: str = "exact_match") -> None:
    """The merges compared: first their gain retention on ``metric`` (merges of all
    experts, with the interval over seeds), then, where subsets were merged, the mean
    retention by number of experts, and last the average ``score_metric`` over tasks of
    the merges of all experts (a subset's average mixes tasks it was never given)."""
    r = pd.read_csv(retention_csv)
    of_all = set(ret.merges_of_all(r)["merge"])
    r = r[(r.backend == backend) & (r.metric == metric)]
    whole = ret.merges_of_all(r)
    sizes = pd.read_csv(by_size_csv)
    sizes = sizes[(sizes.backend == backend) & (sizes.metric == metric)]
    sizes = sizes[sizes.method.isin(set(r[r.subset != ALL].method))]
    scores = pd.read_csv(scores_csv)
    merges = {m.split("/", 1)[1] for m in scores.model.unique() if m.startswith("merge/")}
    shown = (merges & of_all) or merges  # every merge when no retention says which are of all experts
    heights = [0.4 * len(whole) + 1.2] + ([0.4 * len(sizes) + 1.2] if len(sizes) else []) + [0.3 * len(shown) + 1.2]
    fig, axes = plt.subplots(len(heights), 1, figsize=(9, sum(heights)), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    axes = list(axes[:, 0])
    _retention_panel(axes[0], whole, metric, backend)
    if len(sizes):
        _size_panel(axes[1], sizes)
    _average_panel(axes[-1], scores, shown, score_metric, backend)
    _save(fig, out)


def density_curves(retention_csv: str | Path, thresholds_csv: str | Path, out: str | Path,
                   backend: str = "builtin", metric: str = "exact_match") -> None:
    """Merged retention against density for each merge with a density sweep (mean over
    seeds, its interval as a band); an FFG merge's own automatic choice as a star at the
    mean of the densities it chose (over experts and seeds, an expert kept whole at 1)."""
    r = pd.read_csv(retention_csv)
    r = r[(r.backend == backend) & (r.metric == metric)]
    points = ret.density_points(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if points.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no merge sweeps its density (merges.<name>.densities)", ha="center", va="center")
        return _save(fig, out)
    chosen = pd.read_csv(thresholds_csv)  # (sweep_summary writes its header even where no merge uses FFG)
    configured = ret.merges_of_all(r).set_index("merge")
    for method, g in points.groupby("method", sort=False):
        g = g.sort_values("density")
        line, = ax.plot(g.density, g["mean"], marker="o", label=method)
        ax.fill_between(g.density, g.low, g.high, color=line.get_color(), alpha=0.15)
        if method in set(chosen["merge"]) and method in configured.index:
            ax.plot(chosen[chosen["merge"] == method].density.mean(), configured.at[method, "mean"], marker="*",
                    markersize=13, color=line.get_color(), linestyle="none", markeredgecolor="black")
    ax.plot([], [], marker="*", color="gray", linestyle="none", markeredgecolor="black",
            label="automatic choice (mean density)")
    ax.set_xscale("log")
    ticks = sorted(set(points.density))
    ax.set_xticks(ticks, [f"{d:g}" for d in ticks], fontsize=8)
    ax.minorticks_off()
    ax.axhline(1, color="black", lw=1, linestyle="--")
    ax.set_xlabel("density (fraction of each task vector kept)")
    n = int(points.n_seeds.max())
    ax.set_ylabel(f"gain retention, {metric} ({backend})")
    ax.set_title(f"merged retention against density; mean over {n} seed(s), bands: {_interval_label(points)}",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out)


def _tensor_table(statistics: dict) -> pd.DataFrame:
    rows = []
    for name, st in statistics["tensors"].items():
        shape = st["shape"]
        rows.append({"name": name, "role": role_of(name), "layer": layer_of(name), "kept": st["kept"],
                     "total": st["total"],
                     "rows": st.get("rows_any", np.nan) / shape[0] if len(shape) == 2 else np.nan,
                     "cols": st.get("cols_any", np.nan) / shape[1] if len(shape) == 2 else np.nan})
    return pd.DataFrame(rows)


def _layer_order(layers) -> list[str]:
    return sorted({x for x in layers if x != "other"}, key=int) + (["other"] if "other" in set(layers) else [])


def _no_grafts(out: str | Path) -> None:
    """The figure where every expert was merged whole (no swept density kept enough)."""
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, "every expert merged whole (no FFG mask)", ha="center", va="center")
    _save(fig, out)


def localization(stat_files: dict[str, str | Path], out: str | Path) -> None:
    """Kept fraction per layer x role, one heatmap per expert (at its chosen density)."""
    if not stat_files:
        return _no_grafts(out)
    fig, axes = _grid(len(stat_files), width=4.4, height=0.5 + 0.45 * 6)
    for ax, (expert, f) in zip(axes, stat_files.items()):
        stats = json.loads(Path(f).read_text())
        t = _tensor_table(stats)
        g = t.groupby(["layer", "role"])[["kept", "total"]].sum()
        frac = (g.kept / g.total).unstack("role").reindex(index=_layer_order(t.layer),
                                                           columns=[r for r in ROLES if r in set(t.role)])
        im = ax.imshow(frac.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(frac.shape[1]), frac.columns, rotation=60, fontsize=7)
        ax.set_yticks(range(frac.shape[0]), frac.index, fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(f"{expert} @ density {stats['density']:g}", fontsize=9)
        fig.colorbar(im, ax=ax, label="kept fraction", shrink=0.8)
    _save(fig, out)


def mask_rank(stat_files: dict[str, str | Path], out: str | Path) -> None:
    """Share of rows and of columns holding any kept entry, per role (mean over layers):
    a cheap upper bound on the rank of the kept edits."""
    if not stat_files:
        return _no_grafts(out)
    frames = [_tensor_table(json.loads(Path(f).read_text())).assign(expert=e) for e, f in stat_files.items()]
    t = pd.concat(frames)
    t = t[t.rows.notna()]
    roles = [r for r in ROLES if r in set(t.role)]
    fig, axes = _grid(2, width=5.2, height=3.2)
    width = 0.8 / len(stat_files)
    for ax, col in zip(axes, ["rows", "cols"]):
        m = t.groupby(["role", "expert"])[col].mean().unstack("expert").reindex(roles)
        for i, e in enumerate(stat_files):
            ax.bar(np.arange(len(roles)) + i * width, m[e].values, width, label=e)
        ax.set_xticks(np.arange(len(roles)) + 0.4 - width / 2, roles, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"share of {col} with a kept entry")
        ax.set_xlabel("role")
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=len(stat_files))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(out, dpi=120)
    plt.close(fig)


def curvature_overlap(names: Sequence[str], experts: Sequence[str],
                      get: Callable[[str, str], np.ndarray], out: str | Path,
                      fraction: float = 0.01) -> pd.DataFrame:
    """Overlap of each pair of experts' top-``fraction`` second-moment entries per tensor
    (``get(expert, name)`` reads one tensor, so memory is one tensor per expert): left,
    pair x role (mean over layers); right, the first pair layer by layer."""
    pairs = list(itertools.combinations(experts, 2))
    rows = []
    for n in names:
        v = {e: get(e, n) for e in experts}
        rows += [{"pair": f"{a}-{b}", "name": n, "role": role_of(n), "layer": layer_of(n),
                  "overlap": top_overlap(v[a], v[b], fraction)} for a, b in pairs]
    t = pd.DataFrame(rows)
    roles = [r for r in ROLES if r in set(t.role)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(pairs) + 2.2), squeeze=False)
    left, right = axes[0]
    m = t.groupby(["pair", "role"]).overlap.mean().unstack("role").reindex(
        index=[f"{a}-{b}" for a, b in pairs], columns=roles)
    im = left.imshow(m.values, vmin=0, vmax=1, cmap="magma", aspect="auto")
    left.set_xticks(range(len(roles)), roles, rotation=60, fontsize=7)
    left.set_yticks(range(len(m)), m.index, fontsize=7)
    left.set_title(f"top-{fraction:.0%} moment overlap (mean over layers)", fontsize=9)
    fig.colorbar(im, ax=left, label="overlap", shrink=0.8)
    first = t[t.pair == f"{pairs[0][0]}-{pairs[0][1]}"]
    g = first.groupby(["layer", "role"]).overlap.mean().unstack("role").reindex(
        index=_layer_order(first.layer), columns=roles)
    im = right.imshow(g.values, vmin=0, vmax=1, cmap="magma", aspect="auto")
    right.set_xticks(range(len(roles)), roles, rotation=60, fontsize=7)
    right.set_yticks(range(len(g)), g.index, fontsize=7)
    right.set_ylabel("layer")
    right.set_title(f"{pairs[0][0]} vs {pairs[0][1]}, layer by layer", fontsize=9)
    fig.colorbar(im, ax=right, label="overlap", shrink=0.8)
    _save(fig, out)
    return t
