"""A claim's row and its verdict against a margin fixed before any run (report/claims.py).

``holds`` where the 95% Student t interval lies on the claim's side of the margin, ``does
not hold`` where it lies on the other side, ``not separated`` where it straddles the margin
or fewer than three seeds give no t interval, ``not measured`` where the run lacks what the
test needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from otamerge.report.intervals import T95, Interval

HOLDS, FAILS, OPEN, ABSENT = "holds", "does not hold", "not separated", "not measured"
COLUMNS = ["claim", "statement", "measure", "mean", "low", "high", "n_seeds", "interval", "margin", "verdict",
           "detail"]


@dataclass(frozen=True)
class Row:
    claim: str
    statement: str
    measure: str
    iv: Interval | None
    margin: float
    verdict: str
    detail: str = ""

    def record(self) -> dict:
        iv = self.iv or Interval(math.nan, math.nan, math.nan, 0, "none")
        return {"claim": self.claim, "statement": self.statement, "measure": self.measure, "mean": iv.mean,
                "low": iv.low, "high": iv.high, "n_seeds": iv.n, "interval": iv.kind, "margin": self.margin,
                "verdict": self.verdict, "detail": self.detail}


def above(iv: Interval, margin: float) -> str:
    """The claim says the measure exceeds ``margin``."""
    if iv.kind != T95:
        return OPEN
    return HOLDS if iv.low > margin else FAILS if iv.high < margin else OPEN


def below(iv: Interval, margin: float) -> str:
    """The claim says the measure stays under ``margin``."""
    return {HOLDS: FAILS, FAILS: HOLDS}.get(above(iv, margin), OPEN)


def every(verdicts: Iterable[str]) -> str:
    """A claim made at every point: holds where it holds at each, fails where it fails at one."""
    v = list(verdicts)
    return HOLDS if v and all(x == HOLDS for x in v) else FAILS if FAILS in v else OPEN


def absent(claim: str, statement: str, measure: str, why: str) -> Row:
    return Row(claim, statement, measure, None, math.nan, ABSENT, why)
