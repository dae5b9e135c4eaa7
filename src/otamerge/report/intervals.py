"""A mean over seeds and its interval: the 95% Student t confidence interval from three
seeds on, the range (min to max) below that, where a t interval on one degree of freedom
(12.7 standard errors wide) says little.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable

T95 = "t95"  # mean ± t_{0.975, n-1} sd / sqrt(n)
MIN_MAX = "min-max"
NONE = "none"  # no finite value
MIN_SEEDS_FOR_T = 3


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # only the summary needs it

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    kind: str  # T95, MIN_MAX or NONE


def interval(values: Iterable[float]) -> Interval:
    """Mean and interval of the finite values (NaN values, e.g. an undefined retention at
    one seed, are left out and not counted)."""
    v = [float(x) for x in values if math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, NONE)
    mean = sum(v) / n
    if n < MIN_SEEDS_FOR_T:
        return Interval(mean, min(v), max(v), n, MIN_MAX)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, T95)


def describe(kind: str) -> str:
    """How a table names an interval kind."""
    return {T95: "95% CI (Student t)", MIN_MAX: "min-max", NONE: "no value"}[kind]
