"""Gain retention and its interval over seeds, against small computations by hand."""

import json
import math

import pandas as pd
import pytest

from otamerge.workflow import layout
from otamerge.report import retention as ret
from otamerge.report.intervals import interval
from otamerge.workflow.subsets import MergeInfo
from otamerge.report.summary import write_retention

# df 2 in closed form: t = (2p - 1) / sqrt(2 p (1 - p)) at p = 0.975
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def test_three_seeds_give_a_student_t_interval():
    iv = interval([0.2, 0.4, 0.9])
    sd = math.sqrt(((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2)
    half = T975_DF2 * sd / math.sqrt(3)
    assert (iv.mean, iv.n, iv.kind) == (pytest.approx(0.5), 3, "t95")
    assert iv.low == pytest.approx(0.5 - half, rel=1e-9) and iv.high == pytest.approx(0.5 + half, rel=1e-9)


def test_fewer_seeds_give_the_range_and_undefined_values_are_left_out():
    assert interval([0.7, 0.3]) == ret.Interval(pytest.approx(0.5), 0.3, 0.7, 2, "min-max")
    assert interval([0.4, math.nan]) == ret.Interval(0.4, 0.4, 0.4, 1, "min-max")
    none = interval([math.nan])
    assert none.n == 0 and none.kind == "none" and math.isnan(none.mean)


def test_gain_ratio():
    assert ret.gain_ratio(merged=0.5, base=0.2, expert=0.8) == pytest.approx(0.5)
    assert ret.gain_ratio(merged=0.1, base=0.2, expert=0.6) == pytest.approx(-0.25)
    assert math.isnan(ret.gain_ratio(merged=0.3, base=0.2, expert=0.2))


TASKS = {"add": "add", "rev": "reverse", "facts": "facts"}
# per seed: base, experts and merges on each task (exact match)
SCORES = {
    0: {"base": {"add": 0.2, "reverse": 0.1, "facts": 0.0},
        "add": {"add": 0.9, "reverse": 0.1, "facts": 0.0},
        "rev": {"add": 0.2, "reverse": 0.6, "facts": 0.0},
        "facts": {"add": 0.2, "reverse": 0.1, "facts": 0.8},
        "merge/m": {"add": 0.55, "reverse": 0.35, "facts": 0.2},
        "merge/m.add-rev": {"add": 0.9, "reverse": 0.1, "facts": 0.0}},
    1: {"base": {"add": 0.3, "reverse": 0.2, "facts": 0.1},
        "add": {"add": 0.7, "reverse": 0.2, "facts": 0.1},
        "rev": {"add": 0.3, "reverse": 0.2, "facts": 0.1},  # no gain: ratio undefined at this seed
        "facts": {"add": 0.3, "reverse": 0.2, "facts": 0.5},
        "merge/m": {"add": 0.4, "reverse": 0.3, "facts": 0.4},
        "merge/m.add-rev": {"add": 0.5, "reverse": 0.2, "facts": 0.1}},
}
MERGES = {"m": MergeInfo("m", "m", "all", ("add", "rev", "facts")),
          "m.add-rev": MergeInfo("m.add-rev", "m", "add-rev", ("add", "rev"))}


def _frame() -> pd.DataFrame:
    rows = [{"model": model, "task": task, "metric": "exact_match", "score": s, "n": 10, "backend": "builtin",
             "seed": seed} for seed, models in SCORES.items() for model, tasks in models.items()
            for task, s in tasks.items()]
    return pd.DataFrame(rows)


def test_retention_of_each_merge_at_each_seed():
    by_seed = ret.retention_by_seed(_frame(), MERGES, TASKS)
    got = {(r.merge, r.seed): r.retention for r in by_seed.itertuples()}
    # seed 0, m: add (0.55-0.2)/(0.9-0.2) = 0.5, rev (0.35-0.1)/(0.6-0.1) = 0.5, facts 0.2/0.8 = 0.25
    assert got[("m", 0)] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    # seed 0, the pair: add keeps all of its gain, rev none
    assert got[("m.add-rev", 0)] == pytest.approx((1.0 + 0.0) / 2)
    # seed 1: rev gained nothing, so no merge holding it has a retention
    assert math.isnan(got[("m", 1)]) and math.isnan(got[("m.add-rev", 1)])
    assert list(by_seed.columns) == ret.BY_SEED and set(by_seed.subset_size) == {3, 2}


def test_merge_retention_of_one_seed_by_hand():
    score = {(m, t): s for m, tasks in SCORES[0].items() for t, s in tasks.items()}
    assert ret.merge_retention(score, "m", ["add", "facts"], TASKS) == pytest.approx((0.5 + 0.25) / 2)
    assert math.isnan(ret.merge_retention(score, "m", ["add"], {"add": None}))  # no own task
    assert math.isnan(ret.merge_retention(score, "missing", ["add"], TASKS))  # no score


def test_mean_over_seeds_and_by_subset_size():
    by_seed = pd.DataFrame([
        {"merge": m, "method": "m", "subset": sub, "subset_size": size, "density": math.nan, "seed": seed,
         "backend": "builtin", "metric": "exact_match", "retention": r}
        for (m, sub, size), values in {("m", "all", 3): [0.2, 0.4, 0.9],
                                       ("m.a-b", "a-b", 2): [0.5, 0.7, 0.6],
                                       ("m.a-c", "a-c", 2): [0.1, 0.3, math.nan]}.items()
        for seed, r in enumerate(values)])
    agg = ret.aggregate(by_seed).set_index("merge")
    assert list(ret.aggregate(by_seed).columns) == ret.AGGREGATE
    half = T975_DF2 * math.sqrt(0.13) / math.sqrt(3)  # sd of 0.2, 0.4, 0.9 is sqrt(0.13)
    assert agg.loc["m", ["mean", "low", "high"]].tolist() == pytest.approx([0.5, 0.5 - half, 0.5 + half], rel=1e-9)
    assert agg.loc["m.a-c", ["mean", "low", "high", "n_seeds"]].tolist() == pytest.approx([0.2, 0.1, 0.3, 2])
    assert agg.loc["m.a-c", "interval"] == "min-max" and agg.loc["m", "interval"] == "t95"
    sizes = ret.by_size(by_seed).set_index("subset_size")
    # size 2 per seed: mean of the two pairs (0.3, 0.5), seed 2 undefined (one pair has no value)
    assert sizes.loc[2, ["mean", "low", "high", "n_seeds", "n_subsets"]].tolist() == pytest.approx([0.4, 0.3, 0.5, 2, 2])
    assert sizes.loc[3, "mean"] == pytest.approx(0.5) and sizes.loc[3, "interval"] == "t95"


def test_each_step_of_the_ranking_is_a_paired_difference_over_seeds():
    by_seed = pd.DataFrame([
        {"merge": m, "method": m, "subset": "all", "subset_size": 3, "density": math.nan, "seed": seed,
         "backend": "builtin", "metric": "exact_match", "retention": r}
        for m, values in {"x": [0.9, 0.8, 0.85], "y": [0.5, 0.45, 0.4], "z": [0.6, 0.3, 0.35]}.items()
        for seed, r in enumerate(values)])
    steps = ret.ranking_steps(by_seed, ret.aggregate(by_seed))
    assert list(steps.columns) == ret.STEPS
    assert [tuple(r) for r in steps[["merge", "next_merge"]].values] == [("x", "y"), ("y", "z")]
    # x - y per seed: 0.4, 0.35, 0.45 (mean 0.4, sd 0.05); y - z: -0.1, 0.15, 0.05 (mean 1/30)
    half = T975_DF2 * 0.05 / math.sqrt(3)
    assert steps.iloc[0][["mean", "low", "high"]].tolist() == pytest.approx([0.4, 0.4 - half, 0.4 + half], rel=1e-9)
    assert steps.iloc[0].separated and steps.iloc[0].interval == "t95"
    d = [-0.1, 0.15, 0.05]
    sd = math.sqrt(sum((x - 1 / 30) ** 2 for x in d) / 2)
    assert steps.iloc[1]["high"] == pytest.approx(1 / 30 + T975_DF2 * sd / math.sqrt(3), rel=1e-9)
    assert not steps.iloc[1].separated


def test_retention_files_lead_with_exact_match(tmp_path):
    frame = _frame()
    graded = frame.assign(metric="token_accuracy", score=frame.score * 0.5 + 0.25)
    files = []
    for seed, rows in pd.concat([graded, frame]).groupby("seed"):  # token accuracy first in the files
        f = tmp_path / layout.scores(seed, "builtin", "all")
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps(rows.drop(columns="seed").to_dict("records")))
        files.append(f)
    merges = {n: {"configured": i.configured, "subset": i.subset, "experts": list(i.experts)} for n, i in MERGES.items()}
    out = {k: tmp_path / f"{k}.out" for k in ("md", "csv", "size", "seed")}
    write_retention(files, merges, TASKS, out["md"], out["csv"], out["size"], out["seed"])
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns) == ret.AGGREGATE
    assert list(dict.fromkeys(csv.metric)) == ["exact_match", "token_accuracy"]
    m = csv[(csv["merge"] == "m") & (csv.metric == "exact_match")].iloc[0]
    assert (m["mean"], m.n_seeds, m.interval) == (pytest.approx(1.25 / 3, rel=1e-5), 1, "min-max")
    md = out["md"].read_text()
    assert md.index("## exact_match (builtin): merges of all experts") < md.index("## token_accuracy (builtin)")
    assert "## exact_match (builtin): mean retention by subset size" in md and "| 2 experts" in md
    assert len(pd.read_csv(out["seed"])) == 2 * 2 * 2  # merges x seeds x metrics


def test_no_task_scores_no_retention(tmp_path):
    """Perplexity of held-out text scores no expert's own task: no rows, and the table says why."""
    f = tmp_path / layout.scores(0, "perplexity", "base")
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps([{"model": "base", "task": "heldout", "metric": "perplexity", "score": 3.0, "n": 9,
                              "backend": "perplexity"}]))
    out = [tmp_path / n for n in ("a.md", "b.csv", "c.csv", "d.csv")]
    agg = write_retention([f], {"m": {"configured": "m", "subset": "all", "experts": ["add"]}}, {"add": "add"}, *out)
    assert agg.empty and "no retention" in out[0].read_text()


def test_points_of_a_density_sweep_are_their_own_rows_outside_the_ranking_and_sizes(tmp_path):
    """m@0.05 is m with every expert at density 0.05: a row with its density, not a merge
    of the ranking nor a member of m's size group; retention.md gives it a density table."""
    frame = _frame()
    swept = frame[frame.model == "merge/m"].assign(model="merge/m@0.05", score=lambda f: f.score - 0.05)
    files = []
    for seed, rows in pd.concat([frame, swept]).groupby("seed"):
        f = tmp_path / layout.scores(seed, "builtin", "all")
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps(rows.drop(columns="seed").to_dict("records")))
        files.append(f)
    merges = {"m": {"configured": "m", "subset": "all", "experts": ["add", "facts"], "density": None},
              "m@0.05": {"configured": "m", "subset": "all", "experts": ["add", "facts"], "density": "0.05"}}
    out = {k: tmp_path / f"{k}.out" for k in ("md", "csv", "size", "seed")}
    write_retention(files, merges, TASKS, out["md"], out["csv"], out["size"], out["seed"])
    csv = pd.read_csv(out["csv"]).set_index("merge")
    # seed 0: add (0.5-0.2)/(0.9-0.2) = 3/7, facts (0.15-0)/0.8; seed 1: add 0.05/0.4, facts 0.25/0.4
    expected = ((3 / 7 + 0.15 / 0.8) / 2 + (0.05 / 0.4 + 0.25 / 0.4) / 2) / 2
    assert csv.loc["m@0.05", "density"] == 0.05 and math.isnan(csv.loc["m", "density"])
    assert csv.loc["m@0.05", "mean"] == pytest.approx(expected, rel=1e-5)
    assert ret.merges_of_all(csv.reset_index())["merge"].unique().tolist() == ["m"]
    sizes = pd.read_csv(out["size"])
    assert sizes[(sizes.method == "m") & (sizes.metric == "exact_match")].n_subsets.tolist() == [1]
    md = out["md"].read_text()
    assert "## exact_match (builtin): retention against density" in md
    table = md.split("retention against density", 1)[1].split("##", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith("| m "))
    # the point at density 0.05, then the merge as configured (seeds 0 and 1: (0.5 + 0.375) / 2)
    assert row.split("|")[2].strip().startswith(f"{expected:.3f} [") and "0.438 [0.375, 0.500]" in row.split("|")[3]
