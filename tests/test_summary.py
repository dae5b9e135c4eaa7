"""The cross-seed tables (scores, accuracy, sweep, thresholds) and the merge comparison plot."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from otamerge.workflow import layout

from otamerge.report import claims, plots
from otamerge.report.summary import SCORE_COLUMNS, load_scores, matrix_over_seeds, write_summary, write_sweep

TASKS = {"add": "add", "rev": "reverse"}


def _scores(root: Path, seed: int, model: str, values: dict[str, float], metric="exact_match") -> str:
    """One model's score file in its seed's folder, as the evaluation rules write it."""
    path = root / layout.scores(seed, "builtin", model)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"model": model, "task": t, "metric": metric, "score": s, "n": 10, "backend": "builtin"}
            for t, s in values.items()]
    path.write_text(json.dumps(rows))
    return str(path)


def _thresholds(root: Path, seed: int, merge: str, rows: list[dict]) -> str:
    path = root / layout.merge_thresholds(seed, merge)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def two_seeds(tmp_path):
    files, grafts, thresholds = [], [], {}
    values = {0: (0.2, 0.9, 0.5), 1: (0.4, 0.7, 0.3)}
    for seed, (base, expert, merged) in values.items():
        files += [_scores(tmp_path, seed, "base", {"add": base, "reverse": base}),
                  _scores(tmp_path, seed, "add", {"add": expert, "reverse": base}),
                  _scores(tmp_path, seed, "merge/m", {"add": merged, "reverse": base})]
        # the merge chose density 0.1 at seed 0, 0.5 at seed 1: each seed's graft row is its own
        density = {0: 0.1, 1: 0.5}[seed]
        for d in (0.1, 0.5):
            grafts.append(_scores(tmp_path, seed, f"ffg/add/fisher/{d:g}", {"add": d, "reverse": base}))
        thresholds[_thresholds(tmp_path, seed, "m", [{"expert": "add", "density": density}])] = "fisher"
    return tmp_path, files, grafts, thresholds


def test_scores_carry_the_seed_of_their_folder(two_seeds):
    _, files, _, _ = two_seeds
    df = load_scores(files)
    assert list(df.columns) == SCORE_COLUMNS and set(df.seed) == {0, 1}
    assert set(df[df.seed == 1].score[df.model == "base"]) == {0.4}


def test_accuracy_is_the_mean_over_seeds_with_its_range(two_seeds):
    root, files, grafts, thresholds = two_seeds
    out = {k: root / f"out.{k}" for k in ("csv", "md", "json")}
    df = write_summary(files, ["add", "reverse"], out["csv"], out["md"], out["json"], grafts, thresholds)
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns) == SCORE_COLUMNS
    # by seed: base, expert, the graft chosen at that seed, merges
    assert list(dict.fromkeys(zip(csv.seed, csv.model))) == [
        (0, "base"), (0, "add"), (0, "ffg/add/fisher/0.1"), (0, "merge/m"),
        (1, "base"), (1, "add"), (1, "ffg/add/fisher/0.5"), (1, "merge/m")]
    tables = matrix_over_seeds(df, "exact_match", ["add", "reverse"], "builtin")
    assert tables["mean"].at["merge/m", "add"] == pytest.approx(0.4)
    assert (tables["low"].at["merge/m", "add"], tables["high"].at["merge/m", "add"]) == (0.3, 0.5)
    # the average over tasks at each seed ((0.5 + 0.2) / 2, (0.3 + 0.4) / 2), then over seeds
    assert tables["mean"].at["merge/m", "average"] == pytest.approx(0.35)
    assert tables["n"].at["ffg/add/fisher/0.1", "add"] == 1
    md = out["md"].read_text()
    assert md.startswith("## exact_match (builtin)") and "Mean over 2 seeds" in md
    assert "0.400 [0.300, 0.500]" in md  # merge/m on add
    assert json.loads(out["json"].read_text())["builtin"]["exact_match"]["merge/m"]["add"] == pytest.approx(0.4)


def test_one_seed_keeps_the_plain_table(two_seeds):
    root, files, _, _ = two_seeds
    seed0 = [f for f in files if layout.seed_of(f) == 0]
    write_summary(seed0, ["add", "reverse"], root / "s.csv", root / "a.md", root / "a.json")
    md = (root / "a.md").read_text()
    assert "[" not in md and "seeds" not in md and "| merge/m |" in md and "0.500" in md


def test_sweep_and_thresholds_per_seed(two_seeds):
    root, _, grafts, thresholds = two_seeds
    out = {k: root / f"sweep.{k}" for k in ("md", "csv", "thr")}
    write_sweep(grafts, {f: "m" for f in thresholds}, TASKS, out["md"], out["csv"], out["thr"])
    sweep = pd.read_csv(out["csv"])
    assert list(sweep.columns) == ["seed", "expert", "ffg_metric", "density", "metric", "score"]
    assert len(sweep) == 4 and set(sweep.seed) == {0, 1}
    assert "(mean over 2 seeds)" in out["md"].read_text()
    chosen = pd.read_csv(out["thr"])
    assert sorted(zip(chosen.seed, chosen["merge"], chosen.density)) == [(0, "m", 0.1), (1, "m", 0.5)]


def test_chosen_statistics_come_from_the_given_graft_folders(two_seeds, tmp_path):
    root, _, grafts, thresholds = two_seeds
    write_sweep(grafts, {f: "m" for f in thresholds}, TASKS, root / "s.md", root / "s.csv", root / "t.csv")
    folders = {f"ffg/add/fisher/{d}": tmp_path / "elsewhere" / d for d in ("0.1", "0.5")}
    got = claims.chosen_statistics(root / "t.csv", "m", "fisher", 1, folders)
    assert got == {"add": tmp_path / "elsewhere/0.5/statistics.json"}


def test_experts_merged_whole_have_no_graft_and_the_graft_plots_say_so(tmp_path):
    (tmp_path / "t.csv").write_text("expert,density,merge,seed\nadd,1.0,m,0\n")
    assert claims.chosen_statistics(tmp_path / "t.csv", "m", "fisher", 0, {}) == {}
    for draw in (plots.localization, plots.mask_rank):
        draw({}, tmp_path / f"{draw.__name__}.png")
        assert (tmp_path / f"{draw.__name__}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("with_subsets", [False, True])
def test_methods_plot_leads_with_retention(tmp_path, with_subsets):
    retention = pd.DataFrame([
        {"merge": "ota_ffg", "method": "ota_ffg", "subset": "all", "subset_size": 3, "density": math.nan,
         "backend": "builtin", "metric": "exact_match", "mean": 0.4, "low": 0.2, "high": 0.6, "n_seeds": 3, "interval": "t95"},
        {"merge": "ties", "method": "ties", "subset": "all", "subset_size": 3, "density": math.nan,
         "backend": "builtin", "metric": "exact_match", "mean": math.nan, "low": math.nan, "high": math.nan, "n_seeds": 0,
         "interval": "none"}]
        + ([{"merge": "ota_ffg.a-b", "method": "ota_ffg", "subset": "a-b", "subset_size": 2, "density": math.nan,
             "backend": "builtin", "metric": "exact_match", "mean": 0.7, "low": 0.6, "high": 0.8, "n_seeds": 3, "interval": "t95"}]
           if with_subsets else []))
    sizes = pd.DataFrame([{"method": "ota_ffg", "subset_size": s, "n_subsets": 1, "backend": "builtin",
                           "metric": "exact_match", "mean": m, "low": m - 0.1, "high": m + 0.1, "n_seeds": 3,
                           "interval": "t95"} for s, m in ((2, 0.7), (3, 0.4))])
    scores = pd.DataFrame([{"model": m, "task": "add", "metric": "token_accuracy", "score": s, "n": 10,
                            "backend": "builtin", "seed": 0}
                           for m, s in (("base", 0.3), ("add", 0.9), ("merge/ota_ffg", 0.6), ("merge/ties", 0.5))])
    paths = [tmp_path / n for n in ("r.csv", "s.csv", "scores.csv")]
    for frame, p in zip((retention, sizes, scores), paths):
        frame.to_csv(p, index=False)
    plots.method_comparison(*paths, tmp_path / "methods.png", "token_accuracy")
    assert (tmp_path / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
