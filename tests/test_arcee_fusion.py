"""arcee_fusion against its definition computed here in Python floats."""

import math

import pytest
import torch

from otamerge.methods.arcee_fusion import arcee_fusion
from otamerge.methods.base import TensorInputs


def _softmax(row):
    e = [math.exp(x - max(row)) for x in row]
    return [x / sum(e) for x in e]


def test_entries_of_outlying_importance_take_the_other_models_value():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(4, 25, generator=g, dtype=torch.float64)
    b = a + 0.1 * torch.randn(4, 25, generator=g, dtype=torch.float64)
    b[1, 3] += 5.0  # one large change: an outlier of importance
    scores = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        p, q = [x + 1e-8 for x in _softmax(rb)], [x + 1e-8 for x in _softmax(ra)]
        kl = sum(x * math.log(x / y) for x, y in zip(p, q))
        scores.append([abs(y - x) * kl for x, y in zip(ra, rb)])
    flat = sorted(s for row in scores for s in row)
    q1, med, q3 = (flat[int(f * (len(flat) - 1))] for f in (0.25, 0.5, 0.75))
    keep = [[s >= med + 1.5 * (q3 - q1) for s in row] for row in scores]
    got = arcee_fusion(TensorInputs("w", a, [b], [None], [{}], {})).tolist()
    want = [[y if k else x for x, y, k in zip(ra, rb, rk)] for ra, rb, rk in zip(a.tolist(), b.tolist(), keep)]
    assert got == [pytest.approx(row, abs=1e-15) for row in want]
    assert got[1][3] == b[1, 3].item() and 0 < sum(map(sum, keep)) < 100
