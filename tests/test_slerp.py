"""slerp against the formula computed here in plain Python floats."""

import math

import pytest
import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import TensorInputs
from otamerge.methods.slerp import slerp


def _inputs(base, other, t, **params):
    return TensorInputs("w", base, [other], [None], [{}], {"t": t, "dot_threshold": 0.9995, "eps": 1e-8, **params})


def _reference(a: list[float], b: list[float], t: float) -> list[float]:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    cos = sum(x * y for x, y in zip(a, b)) / (na * nb)
    if abs(cos) > 0.9995:
        return [(1 - t) * x + t * y for x, y in zip(a, b)]
    theta = math.acos(cos)
    return [(math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta) for x, y in zip(a, b)]


def test_the_tensor_is_interpolated_on_the_great_circle_through_both():
    g = torch.Generator().manual_seed(0)
    base, other = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    got = slerp(_inputs(base, other, 0.3))
    want = _reference(base.flatten().tolist(), other.flatten().tolist(), 0.3)
    assert got.shape == base.shape and got.flatten().tolist() == pytest.approx(want, rel=1e-12, abs=1e-14)
    # orthogonal unit vectors at t = 1/2: the bisector on the unit circle
    half = slerp(_inputs(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5))
    assert half.tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)], abs=1e-7)
    # the ends: t = 0 is the base, t = 1 the other model
    assert torch.allclose(slerp(_inputs(base, other, 0.0)), base) and torch.allclose(slerp(_inputs(base, other, 1.0)), other)


def test_nearly_parallel_tensors_are_interpolated_linearly():
    base = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    assert slerp(_inputs(base, 3 * base, 0.25)).tolist() == [1.5, -3.0, 6.0]  # (1 - t) a + t b


def test_slerp_takes_the_base_and_exactly_one_model():
    x = torch.ones(2, 2)
    with pytest.raises(OtaMergeError, match="exactly one other model"):
        slerp(TensorInputs("w", x, [x, x], [None, None], [{}, {}], {"t": 0.5, "dot_threshold": 0.9995, "eps": 1e-8}))


def test_a_tensor_of_several_blocks_matches_the_formula_in_fp64():
    g = torch.Generator().manual_seed(1)
    base, other = torch.randn(1536, 1700, generator=g), torch.randn(1536, 1700, generator=g)  # 2.5 blocks of 2^20
    a, b = base.double().flatten(), other.double().flatten()
    theta = torch.acos(torch.dot(a, b) / (a.norm() * b.norm()))
    want = (torch.sin(0.7 * theta) * a + torch.sin(0.3 * theta) * b) / torch.sin(theta)
    got = slerp(_inputs(base, other, 0.3)).double().flatten()
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())
