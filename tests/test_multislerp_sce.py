"""multislerp and sce against small computations written here in plain Python floats (the
agreement with mergekit-yaml itself is in test_mergekit_agreement.py)."""

from __future__ import annotations

import math

import pytest
import torch

from otamerge.config import parse_config
from otamerge.errors import OtaMergeError
from otamerge.methods.base import TensorInputs
from otamerge.methods.multislerp import multislerp
from otamerge.methods.sce import sce


def _inputs(method, base, models, model_params=None, **params):
    n = len(models)
    cfg = parse_config({"merge_method": method, "base_model": "b", "parameters": params,
                        "models": [{"model": f"m{i}", "parameters": (model_params or [{}] * n)[i]}
                                   for i in range(n)]})
    return TensorInputs("model.layers.0.mlp.up_proj.weight", base, [m.clone() for m in models],
                        [None] * n, [m.params for m in cfg.models], cfg.params)


def test_multislerp_of_two_orthogonal_vectors_is_the_bisector_at_the_mean_norm():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    base = torch.tensor([1.0, -1.0])
    got = multislerp(_inputs("multislerp", base, [a + base, b + base], [{"weight": 0.5}] * 2))
    r = 3.5 / math.sqrt(2)  # direction (1, 1)/sqrt(2), length (3 + 4) / 2
    assert torch.allclose(got, torch.tensor([1 + r, -1 + r]), rtol=1e-6)
    # without normalising the weights (1, 1): the same direction at the sum of the norms
    raw = multislerp(_inputs("multislerp", torch.zeros(2), [a, b], [{"weight": 1.0}] * 2, normalize_weights=False))
    assert torch.allclose(raw, torch.tensor([7 / math.sqrt(2)] * 2), rtol=1e-6)


def test_multislerp_is_the_normalised_weighted_mean_direction_at_the_weighted_mean_norm():
    """The tangent step sum_i a_i (u_i - <u_i, m> m) is zero in exact arithmetic, so
    mergekit's definition reduces to this closed form."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=g)
    models = [base + torch.randn(4, 5, generator=g) * s for s in (0.5, 1.0, 2.0)]
    weights = [0.2, 0.5, 0.3]
    got = multislerp(_inputs("multislerp", base, models, [{"weight": w} for w in weights]))
    ts = [[x - y for x, y in zip(m.reshape(-1).tolist(), base.reshape(-1).tolist())] for m in models]
    norms = [math.sqrt(sum(v * v for v in t)) for t in ts]
    mean = [sum(w * t[j] / n for w, t, n in zip(weights, ts, norms)) for j in range(20)]
    length = math.sqrt(sum(v * v for v in mean))
    scale = sum(w * n for w, n in zip(weights, norms))
    want = [b + scale * v / length for b, v in zip(base.reshape(-1).tolist(), mean)]
    assert torch.allclose(got.reshape(-1).double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_multislerp_edge_cases():
    a = torch.tensor([1.0, 2.0])
    single = _inputs("multislerp", torch.zeros(2), [a], [{"weight": 1.0}])
    assert torch.equal(multislerp(single), a)  # one model: itself
    base = torch.tensor([5.0, 6.0])
    # antipodal pair at equal weights: mergekit's linear fallback, here the base
    pair = _inputs("multislerp", base, [base + a, base - a], [{"weight": 1.0}] * 2)
    assert torch.equal(multislerp(pair), base)
    # every task vector zero: the base (mergekit raises there)
    zero = _inputs("multislerp", base, [base] * 3, [{"weight": 1.0}] * 3)
    assert torch.equal(multislerp(zero), base)
    with pytest.raises(OtaMergeError, match="antipodal"):
        multislerp(_inputs("multislerp", base, [base + a, base - a, base], [{"weight": 1.0}] * 3))


def test_sce_selects_the_top_variance_entries_weights_by_mean_square_and_elects_signs():
    base = torch.ones(6)
    t1 = torch.tensor([0.1, 1.0, -2.0, 3.0, 0.5, 0.0])
    t2 = torch.tensor([0.1, -1.0, 2.0, 1.0, 0.5, 0.0])
    t3 = torch.tensor([0.1, 0.0, 2.0, -1.0, 0.5, 0.0])
    # variances across the models: 0, 2/3, 96/27, 8/3, 0, 0: three nonzero, top int(3 * 0.7) = 2
    # are entries 2 and 3; mean squares after selection 13/6, 5/6, 5/6 -> weights 13, 5, 5 (/23)
    got = sce(_inputs("sce", base, [base + t for t in (t1, t2, t3)], select_topk=0.7))
    entry2 = (5 * 2 + 5 * 2) / (5 + 5)  # sum 2 > 0: models 2 and 3 agree
    entry3 = (13 * 3 + 5 * 1) / (13 + 5)  # sum 3 > 0: models 1 and 2 agree
    assert torch.allclose(got, torch.tensor([1, 1, 1 + entry2, 1 + entry3, 1, 1]), rtol=1e-6)


def test_sce_weights_equally_when_the_mean_squares_sum_below_1e_6():
    base = torch.zeros(2)
    t1, t2 = torch.tensor([1e-4, -2e-4]), torch.tensor([3e-4, 1e-4])
    got = sce(_inputs("sce", base, [t1, t2]))
    # equal weights: entry 0 the mean of both (mean-square weights 1:2 would give 2.33e-4);
    # entry 1 sums to -1e-4, so only model 1 (negative) agrees
    assert torch.allclose(got, torch.tensor([2e-4, -2e-4]), rtol=1e-6)


def test_sce_accepts_the_papers_density_and_weight_and_ignores_them():
    t = [torch.tensor([0.3, -0.2, 0.5, 0.1]), torch.tensor([0.1, 0.4, -0.5, 0.2])]
    plain = sce(_inputs("sce", torch.zeros(4), t, select_topk=0.5))
    paper = sce(_inputs("sce", torch.zeros(4), t, [{"weight": 0.3}, {"weight": 2.0}],
                        select_topk=0.5, density=0.9, weight=1.0))
    assert torch.equal(plain, paper)
