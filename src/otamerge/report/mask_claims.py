"""Claims (d) and (e) from a run's model files: where FFG's masks lie (early attention q/k
projections and token embeddings), how low their rank is, and how much experts' curvature
overlaps. Rows and verdicts as in report/claims.py."""

from __future__ import annotations

import itertools
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from otamerge.report.intervals import interval
from otamerge.report.sites import layer_of, role_of
from otamerge.report.verdicts import Row, above, absent

TOP_FRACTION = 0.01    # curvature overlap: each expert's top 1% of exp_avg_sq entries per matrix
EARLY_SHARE = 1 / 3    # "early" layers: the first third


def early_share(stats: Mapping, n_layers: int) -> tuple[float, float]:
    """(share of an FFG mask's kept entries, share of all parameters) in the token
    embeddings and the q and k projections of the first third of the layers."""
    def early(name: str) -> bool:
        role, layer = role_of(name), layer_of(name)
        return role == "embed" or (role in ("q", "k") and layer != "other" and int(layer) < EARLY_SHARE * n_layers)
    t = stats["tensors"]
    kept = sum(s["kept"] for s in t.values())
    total = sum(s["total"] for s in t.values())
    return (sum(s["kept"] for n, s in t.items() if early(n)) / kept if kept else math.nan,
            sum(s["total"] for n, s in t.items() if early(n)) / total)


def concentration(per_seed_stats: Mapping[int, Mapping[str, Mapping]], n_layers: int) -> Row:
    """(d2) FFG's masks concentrate in early q/k projections and token embeddings: per
    seed, the mean over experts of (kept share there) / (parameter share there); above 1."""
    text = "FFG's masks concentrate in early attention q/k projections and token embeddings"
    measure = ("kept share / parameter share of token embeddings + q,k of the first third of layers, "
               "mean over experts at their chosen densities")
    if not any(per_seed_stats.values()):
        return absent("d2", text, measure, "no expert was grafted (every one merged whole, or no FFG merge)")
    ratios, kept, params = [], [], []
    for stats in per_seed_stats.values():
        shares = [early_share(s, n_layers) for s in stats.values()]
        ratios.append(np.mean([k / p for k, p in shares]) if shares else math.nan)
        kept += [k for k, _ in shares]
        params += [p for _, p in shares]
    iv = interval(ratios)
    return Row("d2", text, measure, iv, 1.0, above(iv, 1.0),
               f"kept share {np.mean(kept):.3f} against a parameter share of {np.mean(params):.3f}")


def mask_rank_share(base: Callable[[str], np.ndarray], graft: Callable[[str], np.ndarray],
                    names: Sequence[str], seed: int) -> tuple[float, float]:
    """(rank of the FFG mask, rank of a random mask with as many entries) over the full
    rank, mean over the 2-D tensors ``names``; the mask is where the graft differs from
    the base."""
    import torch  # only the claims job reads tensors

    rng = np.random.default_rng(seed)
    ffg, rand = [], []
    for n in names:
        mask = base(n) != graft(n)
        full = min(mask.shape)
        kept = int(mask.sum())
        if kept == 0:
            continue
        random_mask = np.zeros(mask.size, dtype=bool)
        random_mask[rng.choice(mask.size, kept, replace=False)] = True
        for out, m in ((ffg, mask), (rand, random_mask.reshape(mask.shape))):
            out.append(int(torch.linalg.matrix_rank(torch.from_numpy(m.astype(np.float32)))) / full)
    return (float(np.mean(ffg)) if ffg else math.nan, float(np.mean(rand)) if rand else math.nan)


def low_rank(per_seed_ranks: Mapping[int, Sequence[tuple[float, float]]]) -> Row:
    """(d1) FFG's masks are low-rank: per seed, the mean over experts of a random mask's
    rank share minus the FFG mask's (same number of entries per matrix); above 0."""
    text = "FFG's masks are extremely low-rank"
    measure = ("rank / full rank of a random mask with as many entries - of the FFG mask, mean over matrices "
               "and experts")
    pairs = [p for ranks in per_seed_ranks.values() for p in ranks]
    if not pairs:
        return absent("d1", text, measure, "no expert was grafted (every one merged whole, or no FFG merge)")
    iv = interval([np.mean([r - f for f, r in ranks]) if ranks else math.nan for ranks in per_seed_ranks.values()])
    return Row("d1", text, measure, iv, 0.0, above(iv, 0.0),
               f"FFG mask rank share {np.mean([f for f, _ in pairs]):.3f}, random {np.mean([r for _, r in pairs]):.3f}")


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float) -> float:
    """Share of A's top-``fraction`` entries that are also among B's (the same count k)."""
    k = max(1, round(fraction * a.size))
    ta = np.argpartition(a.ravel(), -k)[-k:]
    tb = np.argpartition(b.ravel(), -k)[-k:]
    return len(np.intersect1d(ta, tb, assume_unique=True)) / k


def mean_overlap(get: Callable[[str, str], np.ndarray], experts: Sequence[str], names: Sequence[str]) -> float:
    """Mean over the matrices ``names`` and pairs of experts of their top-1% overlap
    (chance: 0.01); ``get(expert, name)`` reads one tensor, so memory is one per expert."""
    values = []
    for n in names:
        v = {e: get(e, n) for e in experts}
        values += [top_overlap(v[a], v[b], TOP_FRACTION) for a, b in itertools.combinations(experts, 2)]
    return float(np.mean(values)) if values else math.nan


def curvature_overlap(per_seed: Mapping[int, float]) -> Row:
    """(e) experts' curvature overlaps: their top-1% exp_avg_sq entries meet above chance."""
    text = "experts' curvature overlaps"
    measure = f"share of one expert's top {TOP_FRACTION:.0%} exp_avg_sq entries per matrix among another's, mean over pairs"
    values = [v for v in per_seed.values() if math.isfinite(v)]
    if not values:
        return absent("e", text, measure, "fewer than two experts with moments")
    iv = interval(values)
    return Row("e", text, measure, iv, TOP_FRACTION, above(iv, TOP_FRACTION),
               f"{iv.mean / TOP_FRACTION:.1f} times chance ({TOP_FRACTION:g})")
