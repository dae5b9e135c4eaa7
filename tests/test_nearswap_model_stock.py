"""nearswap and model_stock against small computations written here in plain Python floats."""

import math

import pytest
import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import TensorInputs
from otamerge.methods.model_stock import model_stock
from otamerge.methods.nearswap import nearswap


def _inputs(base, models, **params):
    return TensorInputs("w", base, models, [None] * len(models), [{}] * len(models), params)


def test_nearswap_takes_the_other_value_where_close_and_moves_less_where_far():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    other = torch.tensor([0.05, 0.2, -0.4, 1.0], dtype=torch.float64)
    got = nearswap(_inputs(base, [other], t=0.1)).tolist()
    # |a - b| <= t: weight 1 (the other value); else weight t / |a - b|; equal entries: weight 1
    want = [0.05, 0.1 / 0.2 * 0.2, 0.1 / 0.4 * -0.4, 1.0]
    assert got == pytest.approx(want, abs=1e-15)
    with pytest.raises(OtaMergeError, match="exactly one other model"):
        nearswap(_inputs(base, [other, other], t=0.1))


def _stock(w0: list[float], ws: list[list[float]]) -> list[float]:
    offs = [[x - y for x, y in zip(w, w0)] for w in ws]
    cos = []
    for i, a in enumerate(offs):
        for b in offs[i + 1:]:
            cos.append(sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b)))
    c, k = sum(cos) / len(cos), len(ws)
    t = k * c / (1 + (k - 1) * c)
    return [t * sum(col) / k + (1 - t) * x for x, col in zip(w0, zip(*ws))]


def test_model_stock_is_the_papers_interpolation_per_tensor_and_per_row():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(3, 4, generator=g, dtype=torch.float64)
    models = [base + torch.randn(3, 4, generator=g, dtype=torch.float64) + 0.5 for _ in range(3)]
    got = model_stock(_inputs(base, models, filter_wise=False))
    want = _stock(base.flatten().tolist(), [m.flatten().tolist() for m in models])
    assert got.flatten().tolist() == pytest.approx(want, rel=1e-12)
    rows = model_stock(_inputs(base, models, filter_wise=True))
    for r in range(3):
        assert rows[r].tolist() == pytest.approx(_stock(base[r].tolist(), [m[r].tolist() for m in models]), rel=1e-12)


def test_model_stock_keeps_the_base_where_the_task_vectors_cancel():
    base = torch.zeros(2, dtype=torch.float64)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # two opposite task vectors: cos = -1, 1 + (k - 1) cos = 0: no finite estimate, the base
    assert model_stock(_inputs(base, [a, -a], filter_wise=False)).tolist() == [0.0, 0.0]
    with pytest.raises(OtaMergeError, match="at least two other models"):
        model_stock(_inputs(base, [a], filter_wise=False))
