"""DELLA (MAGPRUNE): each entry of a row kept with a probability rising linearly with the
rank of its magnitude, from density - epsilon to density + epsilon, then the task vector
rescaled to its L1 norm. mergekit draws from torch's global generator, which cannot give
our per-tensor seeded masks, so the drop is checked as a distribution: keep rates per rank
against mergekit 0.1.5's own della_magprune over many seeds, and against the formula; the
rescale is mergekit's own rescaled_masked_tensor on the same mask, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO
from otamerge.methods import sparsify, streamed
from otamerge.methods.base import TensorInputs

MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", REPO / ".venv-mergekit/bin/mergekit-yaml"))
DRAWS = 400

MERGEKIT_DRAWS = """
import sys, torch
from safetensors.torch import load_file, save_file
from mergekit.sparsify import RescaleNorm, della_magprune, rescaled_masked_tensor
t = load_file(sys.argv[1])
freq = torch.zeros_like(t["delta"])
for k in range(int(sys.argv[3])):
    torch.manual_seed(k)
    freq += (della_magprune(t["delta"], density=0.4, epsilon=0.15) != 0).float()
rescaled = rescaled_masked_tensor(t["delta"], t["mask"], RescaleNorm.l1)
save_file({"freq": freq / int(sys.argv[3]), "rescaled": rescaled}, sys.argv[2])
"""


def test_keep_probabilities_rise_with_the_rank_within_each_row():
    p = sparsify.della_probabilities(torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.5, -0.0, 9.0, 4.0]]).abs(), 0.5, 0.1)
    # ranks 3, 0, 2, 1 (equal magnitudes: lower index first) and 1, 0, 3, 2, over n - 1 = 3
    expected = torch.tensor([[3, 0, 2, 1], [1, 0, 3, 2]]) / 3 * 0.2 + 0.4
    assert torch.allclose(p, expected, atol=1e-7, rtol=0)
    assert sparsify.della_probabilities(torch.ones(5, 1), 0.3, 0.1).eq(0.3).all()  # one entry a row: density


def test_the_mask_does_not_depend_on_the_row_block(monkeypatch):
    x = torch.randn(37, 23)
    whole = sparsify.della_mask(lambda a, b: x[a:b].abs(), x.shape, 0.4, 0.1, torch.Generator().manual_seed(3))
    monkeypatch.setattr(sparsify, "RADIX_CHUNK", 50)  # two rows a block
    blocks = sparsify.della_mask(lambda a, b: x[a:b].abs(), x.shape, 0.4, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(whole, blocks)


@pytest.mark.parametrize("density,epsilon", [(0.1, 0.15), (0.9, 0.1)])
def test_density_and_epsilon_outside_the_unit_interval_are_refused(density, epsilon):
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        sparsify.della(torch.randn(4, 4), density, epsilon, torch.Generator().manual_seed(0))


def test_streamed_della_gives_the_whole_tensor_paths_bits():
    from otamerge.methods.registry import implementation
    from otamerge.methods.task_arithmetic import _whole

    torch.manual_seed(0)
    base = torch.randn(300, 40)
    models = [base + 0.1 * torch.randn(300, 40) for _ in range(3)]
    method = implementation("della")
    params = {"normalize": True, "rescale": True, "lambda": 1.0, "int8_mask": False}
    mp = [{"weight": w, "density": 0.5, "epsilon": 0.2} for w in (0.5, 0.3, 0.7)]
    inputs = TensorInputs(name="model.layers.0.mlp.up_proj.weight", base=base, models=models, moments=[None] * 3,
                          params=params, model_params=mp, seed=7)
    whole = _whole(inputs, "della", True, torch.float32)  # the path for fp64 inputs and NaN scores
    slices = streamed.SLICE
    try:
        streamed.SLICE = 512  # many slices, none row-aligned
        sliced = method.merge(inputs)
    finally:
        streamed.SLICE = slices
    assert torch.equal(whole, sliced) and not torch.equal(whole, base)


@pytest.mark.skipif(not MERGEKIT.is_file() and not os.environ.get("OTAMERGE_REQUIRE_MERGEKIT"),
                    reason="mergekit 0.1.5 not installed (make test installs it)")
def test_keep_rates_match_mergekits_della_and_the_rescale_is_its_own(tmp_path):
    torch.manual_seed(1)
    delta = torch.randn(8, 64)
    ours = torch.zeros_like(delta)
    for k in range(DRAWS):  # our per-tensor generators, one seed after the other
        mask = sparsify.della_mask(lambda a, b: delta[a:b].abs(), delta.shape, 0.4, 0.15,
                                   torch.Generator().manual_seed(k))
        ours += mask.view_as(delta).float()
    ours /= DRAWS
    mask = sparsify.della_mask(lambda a, b: delta[a:b].abs(), delta.shape, 0.4, 0.15, torch.Generator().manual_seed(0))
    save_file({"delta": delta, "mask": mask.view_as(delta).float()}, tmp_path / "in.safetensors")
    subprocess.run([str(MERGEKIT.parent / "python"), "-c", MERGEKIT_DRAWS, str(tmp_path / "in.safetensors"),
                    str(tmp_path / "out.safetensors"), str(DRAWS)], check=True)
    theirs = load_file(tmp_path / "out.safetensors")
    expected = sparsify.della_probabilities(delta.abs(), 0.4, 0.15)
    # per rank (columns sorted by |delta| within rows), mean over the 8 rows: 3200 draws each
    order = delta.abs().argsort(dim=1)
    by_rank = [f.gather(1, order).mean(0) for f in (ours, theirs["freq"], expected)]
    assert (by_rank[0] - by_rank[2]).abs().max() < 0.04 and (by_rank[1] - by_rank[2]).abs().max() < 0.04
    assert abs(float(by_rank[0][:16].mean() - by_rank[1][:16].mean())) < 0.015  # the smallest quarter: ~0.27
    assert abs(float(by_rank[0][-16:].mean() - by_rank[1][-16:].mean())) < 0.015  # the largest: ~0.53
    assert abs(float(ours.mean()) - 0.4) < 0.01 and abs(float(theirs["freq"].mean()) - 0.4) < 0.01
    rescaled = sparsify.della(delta.clone(), 0.4, 0.15, torch.Generator().manual_seed(0), rescale=True)
    assert torch.equal(rescaled, theirs["rescaled"])
