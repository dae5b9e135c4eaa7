"""Density values: the fraction of entries FFG keeps, and its one spelling in paths.

Imports no torch: the workflow reads it while building the DAG.
"""

from __future__ import annotations

import math

from otamerge.errors import OtaMergeError


def density_label(density: float) -> str:
    """One spelling per density (0.1 and 0.10 are one sweep point)."""
    return f"{float(density):g}"


def check_density(density: float) -> float:
    d = float(density)
    if not 0 < d <= 1 or math.isnan(d):
        raise OtaMergeError(f"density {density} is outside (0, 1]")
    return d
