import math

import pytest
import torch

from otamerge.ffg.threshold import exact_thresholds, keep_count


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    wide = torch.exp(torch.empty(20_000).uniform_(math.log(1e-30), 0.0, generator=g))
    ties = torch.full((3_000,), 0.25)                 # a block of exact ties
    zeros = torch.zeros(5_000)
    small_ties = torch.full((500,), 1e-20)
    data = torch.cat([wide, ties, zeros, small_ties])
    return data[torch.randperm(len(data), generator=g)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_threshold_equals_sorting(seed):
    data = _data(seed)
    densities = [1e-4, 0.01, 0.05, 0.1, 0.12, 0.2, 0.4, 0.7, 0.99, 1.0]
    chunks = [data[i:i + 777] for i in range(0, len(data), 777)]
    got, total = exact_thresholds(lambda: iter(chunks), densities)
    ranked = torch.sort(data, descending=True).values
    assert total == len(data)
    for d, thr in zip(densities, got):
        k = keep_count(d, len(data))
        assert thr == float(ranked[k - 1]), d
        kept = int((data >= thr).sum())
        ties = int((data == thr).sum())
        assert k <= kept <= k + ties - 1


def test_thresholds_hit_the_tie_and_zero_blocks():
    data = _data(3)
    n = len(data)
    above = int((data > 0.25).sum())
    d_tie = (above + 10) / n   # the k-th largest falls inside the 0.25 block
    (thr,), _ = exact_thresholds(lambda: iter([data]), [d_tie])
    assert thr == 0.25
    (thr0,), _ = exact_thresholds(lambda: iter([data]), [1.0])
    assert thr0 == 0.0 and int((data >= thr0).sum()) == n


def test_negative_zero_is_treated_as_zero():
    data = torch.tensor([-0.0, 0.0, 1.0, 2.0])
    (thr,), _ = exact_thresholds(lambda: iter([data]), [0.5])
    assert thr == 1.0
