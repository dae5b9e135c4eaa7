"""Breadcrumbs as mergekit 0.1.5 defines it, and the paper's fork's variant
(``breadcrumbs_compat: fork``), which keeps nothing of a tensor with int(gamma * n) == 0."""

from __future__ import annotations

import pytest
import torch

from otamerge.config import parse_config
from otamerge.methods.registry import IMPLEMENTATIONS
from otamerge.methods.base import TensorInputs
from otamerge.methods.sparsify import breadcrumbs


def _delta(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_default_keeps_the_density_of_a_small_tensor_and_the_fork_keeps_nothing():
    d = _delta(1000)
    # gamma 1e-4 of 1000 entries: int(0.1) = 0 outliers cut; density 0.65 keeps 650 entries
    kept = breadcrumbs(d.clone(), 0.65, 1e-4)
    largest = set(torch.sort(d.abs(), descending=True).indices[:650].tolist())
    assert set(torch.nonzero(kept).flatten().tolist()) == largest
    assert torch.equal(kept[kept != 0], d[kept != 0])
    assert int(torch.count_nonzero(breadcrumbs(d.clone(), 0.65, 1e-4, fork=True))) == 0


def test_the_fork_agrees_with_the_default_once_one_outlier_is_cut():
    d = _delta(10_000, seed=1)  # int(1e-4 * 10000) = 1: the top entry goes, 6500 are kept
    default, fork = breadcrumbs(d.clone(), 0.65, 1e-4), breadcrumbs(d.clone(), 0.65, 1e-4, fork=True)
    assert torch.equal(default, fork)
    assert int(torch.count_nonzero(fork)) == 6500 and fork[d.abs().argmax()] == 0


def _merge(method, compat, shape=(40, 25)):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(shape, generator=g)
    models = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(3)]
    params = {"density": 0.65, "gamma": 1e-4} | ({"breadcrumbs_compat": compat} if compat else {})
    cfg = parse_config({"merge_method": method, "base_model": "b", "parameters": params,
                        "models": [{"model": f"m{i}", "parameters": {"weight": 1.0}} for i in range(3)]})
    inputs = TensorInputs("model.norm.weight", base, models, [None] * 3, [m.params for m in cfg.models],
                          cfg.params)
    return base, IMPLEMENTATIONS[method].merge(inputs)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_compat_fork_resets_a_1000_entry_tensor_to_the_base(method):
    base, merged = _merge(method, "fork")
    assert torch.equal(merged, base)
    for compat in (None, "mergekit"):  # the default is mergekit 0.1.5's
        base, merged = _merge(method, compat)
        assert int((merged != base).sum()) > 650  # each model keeps 650 of the 1000 entries
