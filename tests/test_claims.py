"""The paper's claims: each test's measure against small computations by hand, its
verdict against the margin, and what a run that lacks a merge or sweep reports."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from otamerge.report import claims as c
from otamerge.report import mask_claims as mc
from otamerge.report import verdicts as v
from otamerge.report.intervals import Interval

# the merge each claim reads by its role, as the workflow's schema fills it by default
ROLES = {role: p["default"] for role, p in yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())[
    "properties"]["claims"]["properties"].items()}
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student t quantile, 2 degrees of freedom


def _t95(values):
    mean = sum(values) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / 2)
    return mean, mean - T975_DF2 * sd / math.sqrt(3), mean + T975_DF2 * sd / math.sqrt(3)


def _by_seed(retention: dict) -> pd.DataFrame:
    """retention: merge -> (density label or None, [seed 0, 1, 2])."""
    return pd.DataFrame([{"merge": m, "method": m.split("@")[0], "subset": "all", "subset_size": 5,
                          "density": float(d) if d else math.nan, "seed": seed, "backend": "builtin",
                          "metric": "exact_match", "retention": r}
                         for m, (d, values) in retention.items() for seed, r in enumerate(values)])


def test_verdicts_against_a_margin():
    iv = Interval(0.1, 0.05, 0.15, 3, "t95")
    assert v.above(iv, 0.0) == v.HOLDS and v.above(iv, 0.2) == v.FAILS and v.above(iv, 0.1) == v.OPEN
    assert v.below(iv, 0.2) == v.HOLDS and v.below(iv, 0.0) == v.FAILS and v.below(iv, 0.1) == v.OPEN
    assert v.above(Interval(0.5, 0.4, 0.6, 2, "min-max"), 0.0) == v.OPEN  # no t interval below 3 seeds
    assert v.every([v.HOLDS, v.HOLDS]) == v.HOLDS and v.every([v.HOLDS, v.OPEN]) == v.OPEN
    assert v.every([v.HOLDS, v.FAILS, v.OPEN]) == v.FAILS and v.every([]) == v.OPEN


RETENTION = {"ota_ffg": (None, [0.9, 0.85, 0.8]), "ties": (None, [0.7, 0.75, 0.6]),
             "fisher": (None, [0.72, 0.74, 0.65]), "ota_ffg_rank1": (None, [0.89, 0.86, 0.78]),
             "ota": (None, [0.85, 0.8, 0.82]),
             "ota_ffg@0.02": ("0.02", [0.6, 0.65, 0.55]), "ota_ffg@0.1": ("0.1", [0.88, 0.86, 0.82])}


def test_retention_claims_by_hand():
    by_seed = _by_seed(RETENTION)
    wide = c.headline(by_seed)
    a1, a2 = c.ordering(wide, ROLES)
    # OTA+FFG - TIES per seed: 0.2, 0.1, 0.2; TIES - Fisher: -0.02, 0.01, -0.05
    assert (a1.iv.mean, a1.iv.low, a1.iv.high) == pytest.approx(_t95([0.2, 0.1, 0.2]))
    assert a1.verdict == v.HOLDS and a2.verdict == v.OPEN
    rank1 = c.rank1_keeps(wide, ROLES)  # -0.01, 0.01, -0.02: within 0.02?
    assert (rank1.iv.mean, rank1.iv.low) == pytest.approx(_t95([-0.01, 0.01, -0.02])[:2])
    assert rank1.margin == -0.02 and rank1.verdict == v.OPEN  # the interval reaches below -0.02
    f = c.interference(wide, by_seed, ROLES)
    # at 0.02: -0.25, -0.15, -0.27 (OTA+FFG below OTA: fails); the worst point is shown
    assert f.verdict == v.FAILS and f.iv.mean == pytest.approx(-0.67 / 3)
    assert f.detail.startswith("as configured: +0.027") and "0.02: -0.223" in f.detail
    g = c.robustness(wide, by_seed, ROLES)  # best 0.1 - worst 0.02: 0.28, 0.21, 0.27
    assert (g.iv.mean, g.iv.low, g.iv.high) == pytest.approx(_t95([0.28, 0.21, 0.27]))
    assert g.verdict == v.FAILS and "(0.1 vs 0.02)" in g.measure


def test_a_claim_whose_merges_are_missing_is_not_measured():
    by_seed = _by_seed({"ota_ffg": (None, [0.9, 0.85, 0.8])})
    wide = c.headline(by_seed)
    rows = [*c.ordering(wide, ROLES), c.rank1_keeps(wide, ROLES),
            c.interference(wide, by_seed, ROLES), c.robustness(wide, by_seed, ROLES)]
    assert [r.verdict for r in rows] == [v.ABSENT] * 5
    assert rows[0].detail == "no merge ties in this run"
    assert "has no density sweep" in rows[-1].detail


def test_ffg_against_magnitude_grafts_by_hand():
    rows = []
    for seed, (g02, g1) in enumerate([(0.5, 0.1), (0.6, 0.12), (0.4, 0.11)]):
        for expert, shift in (("add", 0.0), ("sort", 0.1)):
            rows += [{"seed": seed, "expert": expert, "ffg_metric": "fisher", "density": 0.02, "metric": "exact_match",
                      "score": 0.9 - shift},
                     {"seed": seed, "expert": expert, "ffg_metric": "magnitude", "density": 0.02,
                      "metric": "exact_match", "score": 0.9 - shift - g02},
                     {"seed": seed, "expert": expert, "ffg_metric": "fisher", "density": 0.1, "metric": "exact_match",
                      "score": 0.95},
                     {"seed": seed, "expert": expert, "ffg_metric": "magnitude", "density": 0.1,
                      "metric": "exact_match", "score": 0.95 - g1}]
    sweep = pd.DataFrame(rows)
    gap = c.graft_gap(sweep, "exact_match")
    assert gap[0.02].tolist() == pytest.approx([0.5, 0.6, 0.4]) and gap[0.1].tolist() == pytest.approx([0.1, 0.12, 0.11])
    b1, b2 = c.grafting(sweep, "exact_match")
    assert b1.verdict == v.HOLDS and b1.iv.mean == pytest.approx(0.33 / 3)  # the smaller gap, at 0.1
    assert (b2.iv.mean, b2.iv.low, b2.iv.high) == pytest.approx(_t95([0.4, 0.48, 0.29]))
    assert b2.verdict == v.HOLDS
    lacking = c.grafting(sweep[sweep.ffg_metric == "fisher"], "exact_match")
    assert [r.verdict for r in lacking] == [v.ABSENT, v.ABSENT]


def _stats(kept: dict) -> dict:
    return {"tensors": {n: {"kept": k, "total": t, "shape": [t]} for n, (k, t) in kept.items()}}


def test_early_share_counts_embeddings_and_the_first_thirds_q_and_k():
    stats = _stats({"model.embed_tokens.weight": (30, 100), "model.layers.0.self_attn.q_proj.weight": (10, 50),
                    "model.layers.0.self_attn.v_proj.weight": (5, 50), "model.layers.1.self_attn.k_proj.weight": (5, 50),
                    "model.layers.2.mlp.up_proj.weight": (50, 250)})
    # 3 layers: the first third is layer 0; early = embeddings + layer 0's q: kept 40 of 100, params 150 of 500
    assert mc.early_share(stats, 3) == pytest.approx((0.4, 0.3))
    row = mc.concentration({0: {"a": stats}, 1: {"a": stats}, 2: {"a": stats}}, 3)
    assert row.iv.mean == pytest.approx(0.4 / 0.3) and row.iv.kind == "t95" and row.verdict == v.HOLDS  # no spread
    assert mc.concentration({0: {}}, 3).verdict == v.ABSENT


def test_a_mask_of_a_few_rows_and_columns_has_their_rank_and_a_random_one_more():
    base = np.zeros((40, 60), dtype=np.float32)
    graft = base.copy()
    graft[np.ix_([1, 5, 9], [0, 2, 4, 6, 8, 10, 12, 14])] = 1.0  # one block: rank 1, 24 entries
    ffg, rand = mc.mask_rank_share(lambda n: base, lambda n: graft, ["w"], seed=0)
    assert ffg == pytest.approx(1 / 40)
    assert rand > 10 / 40  # 24 scattered entries of a 40 x 60 matrix
    row = mc.low_rank({0: [(ffg, rand)], 1: [(ffg, rand)], 2: [(ffg, rand)]})
    assert row.iv.mean == pytest.approx(rand - ffg) and row.verdict == v.HOLDS


def test_curvature_overlap_of_two_experts_by_hand():
    a = np.arange(200, dtype=np.float32)
    b = a.copy()
    b[[198, 199]] = -1  # two of A's top 2 (1% of 200) gone from B's top 2
    assert mc.top_overlap(a, a, 0.01) == 1.0 and mc.top_overlap(a, b, 0.01) == 0.0
    tensors = {("x", "w"): a, ("y", "w"): a, ("x", "v"): a, ("y", "v"): b}
    assert mc.mean_overlap(lambda e, n: tensors[(e, n)], ["x", "y"], ["w", "v"]) == 0.5
    row = mc.curvature_overlap({0: 0.3, 1: 0.2, 2: 0.25})
    assert row.iv.mean == pytest.approx(0.25) and row.verdict == v.HOLDS and row.detail.startswith("25.0 times chance")


def test_claims_files_from_a_run_without_models(tmp_path):
    by_seed = tmp_path / "by_seed.csv"
    _by_seed(RETENTION).to_csv(by_seed, index=False)
    table = c.write_claims(by_seed, None, None, {}, ROLES, None, "exact_match", md=tmp_path / "claims.md",
                           csv=tmp_path / "claims.csv")
    assert table.claim.tolist() == ["a1", "a2", "b1", "b2", "c", "d1", "d2", "e", "f", "g"]
    assert dict(zip(table.claim, table.verdict)) == {
        "a1": v.HOLDS, "a2": v.OPEN, "b1": v.ABSENT, "b2": v.ABSENT, "c": v.OPEN, "d1": v.ABSENT, "d2": v.ABSENT,
        "e": v.ABSENT, "f": v.FAILS, "g": v.FAILS}
    assert pd.read_csv(tmp_path / "claims.csv").columns.tolist() == v.COLUMNS
    md = (tmp_path / "claims.md").read_text()
    a1 = [cell.strip() for cell in next(x for x in md.splitlines() if x.startswith("| a1 ")).split("|")]
    assert a1[2] == "OTA+FFG keeps more of the experts' gains than TIES" and a1[6] == v.HOLDS
    assert a1[4] == "{:.3f} [{:.3f}, {:.3f}]".format(*_t95([0.2, 0.1, 0.2])) and "over 3 seed(s)" in md
