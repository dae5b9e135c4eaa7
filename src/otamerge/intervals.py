"""A mean over seeds and its interval: the 95% Student t confidence interval from three
seeds on, the range (min to max) below that, where a t interval on one degree of freedom
(12.7 standard errors wide) says little.

Student's t quantile is computed here (regularized incomplete beta by its continued
fraction, then bisection) so that the summary needs no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

T95 = "t95"  # mean ± t_{0.975, n-1} sd / sqrt(n)
MIN_MAX = "min-max"
NONE = "none"  # no finite value
MIN_SEEDS_FOR_T = 3


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: int) -> float:
    """The p quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom.

    P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2), which falls as x falls: bisect
    on x until the midpoint stops moving."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    target = 2.0 * (1.0 - p)
    lo, hi = 0.0, 1.0  # I_lo < target <= I_hi
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(df / 2.0, 0.5, mid) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df * (1.0 - hi) / hi)


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
