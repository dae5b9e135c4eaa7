"""karcher and passthrough against their defining properties, computed here in Python floats."""

import math

import pytest
import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import TensorInputs
from otamerge.methods.karcher import karcher
from otamerge.methods.passthrough import passthrough


def _inputs(models, model_params=None, **params):
    return TensorInputs("w", None, models, [None] * len(models), model_params or [{}] * len(models), params)


def test_karcher_of_two_is_the_bisector_at_the_mean_norm():
    a, b = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 4.0], dtype=torch.float64)
    got = karcher(_inputs([a, b], max_iter=10, tol=1e-5)).tolist()
    assert got == pytest.approx([3 * math.sqrt(0.5), 3 * math.sqrt(0.5)], abs=1e-12)


def test_karcher_mean_direction_zeroes_the_mean_log_map():
    """The Karcher mean m of unit vectors u_i minimises sum_i theta_i^2: at it the mean of
    the log maps, sum_i theta_i / sin(theta_i) (u_i - cos(theta_i) m), is (nearly) zero."""
    g = torch.Generator().manual_seed(3)
    models = [torch.randn(6, generator=g, dtype=torch.float64) + 1.0 for _ in range(3)]
    got = karcher(_inputs(models, max_iter=50, tol=1e-12))
    norms = [math.sqrt(sum(x * x for x in w.tolist())) for w in models]
    scale = sum(norms) / 3
    m = [x / scale for x in got.tolist()]
    assert math.sqrt(sum(x * x for x in m)) == pytest.approx(1.0, abs=1e-12)
    grad = [0.0] * 6
    for w, n in zip(models, norms):
        u = [x / n for x in w.tolist()]
        c = sum(x * y for x, y in zip(m, u))
        theta = math.acos(max(-1.0, min(1.0, c)))
        grad = [gi + theta / math.sin(theta) * (ui - c * mi) / 3 for gi, ui, mi in zip(grad, u, m)]
    assert math.sqrt(sum(x * x for x in grad)) < 1e-10


def test_passthrough_is_the_model_or_its_scaled_copy():
    x = torch.tensor([1.0, -2.0])
    assert passthrough(_inputs([x], [{"scale": None}])).tolist() == [1.0, -2.0]
    assert passthrough(_inputs([x], [{"scale": 0.5}])).tolist() == [0.5, -1.0]
    with pytest.raises(OtaMergeError, match="exactly one model"):
        passthrough(_inputs([x, x], [{"scale": None}] * 2))
