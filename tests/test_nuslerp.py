"""nuslerp against the formula computed here in plain Python floats."""

import math

import pytest
import torch

from otamerge.methods.base import TensorInputs
from otamerge.methods.nuslerp import nuslerp


def _slerp(t, a, b):
    cos = sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))
    theta = math.acos(cos)
    return [(math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta) for x, y in zip(a, b)]


def _inputs(base, models, weights, **params):
    p = {"nuslerp_row_wise": False, "nuslerp_flatten": True, **params}
    return TensorInputs("w", base, models, [None] * 2, [{"weight": w} for w in weights], p)


def test_task_vectors_are_interpolated_at_the_weights_ratio_flattened_by_rows_and_by_columns():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(3, 4, generator=g, dtype=torch.float64)
    m0, m1 = (base + torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t0, t1 = (m0 - base), (m1 - base)
    t = 0.3 / (0.6 + 0.3)
    flat = nuslerp(_inputs(base, [m0, m1], [0.6, 0.3]))
    want = [b + s for b, s in zip(base.flatten().tolist(), _slerp(t, t0.flatten().tolist(), t1.flatten().tolist()))]
    assert flat.flatten().tolist() == pytest.approx(want, rel=1e-12)
    rows = nuslerp(_inputs(base, [m0, m1], [0.6, 0.3], nuslerp_flatten=False))
    cols = nuslerp(_inputs(base, [m0, m1], [0.6, 0.3], nuslerp_flatten=False, nuslerp_row_wise=True))
    for r in range(3):
        want = [b + s for b, s in zip(base[r].tolist(), _slerp(t, t0[r].tolist(), t1[r].tolist()))]
        assert rows[r].tolist() == pytest.approx(want, rel=1e-12)
    for c in range(4):
        want = [b + s for b, s in zip(base[:, c].tolist(), _slerp(t, t0[:, c].tolist(), t1[:, c].tolist()))]
        assert cols[:, c].tolist() == pytest.approx(want, rel=1e-12)


def test_parallel_models_and_zero_weights():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    # parallel: linear at t = 0.25; weights summing to 0: t = 0.5
    assert nuslerp(_inputs(None, [a, 3 * a], [0.75, 0.25])).tolist() == pytest.approx([1.5, 3.0])
    b = torch.tensor([2.0, -1.0], dtype=torch.float64)  # orthogonal to a, same norm
    assert nuslerp(_inputs(None, [a, b], [1.0, -1.0])).tolist() == pytest.approx(_slerp(0.5, [1.0, 2.0], [2.0, -1.0]))
