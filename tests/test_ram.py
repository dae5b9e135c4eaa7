"""ram and ramplus_tl against their definitions computed here entry by entry in Python floats."""

import pytest
import torch

from otamerge.methods.base import TensorInputs
from otamerge.methods.ram import ram, ramplus_tl

BASE = [0.0, 0.0, 0.0, 0.0, 1.0]
MODELS = [[0.5, 0.2, 0.0, 0.0, 1.0],
          [0.1, 0.0, 0.3, 0.0, 1.0],
          [0.0, 0.0, 0.6, 0.0, 1.0]]


def _inputs(**params):
    models = [torch.tensor(m, dtype=torch.float64) for m in MODELS]
    return TensorInputs("w", torch.tensor(BASE, dtype=torch.float64), models, [None] * 3, [{}] * 3,
                        {"epsilon": 1e-5, **params})


def _reference(scale=(1.0, 1.0, 1.0)) -> list[float]:
    out = []
    for j, b in enumerate(BASE):
        tv = [m[j] - b for m in MODELS]
        on = [i for i, t in enumerate(tv) if abs(t) > 1e-5]
        if len(on) == 1:
            out.append(b + tv[on[0]] * scale[on[0]])
        else:
            out.append(b + sum(tv[i] for i in on) / max(len(on), 1))
    return out


def test_ram_takes_unique_entries_whole_and_averages_shared_ones():
    # entry 0: models 0 and 1 (mean 0.3); 1: model 0 alone (0.2); 2: models 1 and 2 (0.45); 3, 4: none
    assert ram(_inputs()).tolist() == pytest.approx(_reference(), abs=1e-15)
    assert _reference() == pytest.approx([0.3, 0.2, 0.45, 0.0, 1.0])


def test_ramplus_scales_each_models_unique_entries_by_how_much_it_shares():
    # model 0: shares 1 entry, unique 1 -> rho 1; models 1 and 2: unique 0 -> rho = shared / epsilon (clamped to alpha)
    r, alpha = 0.5, 0.9
    scale = [1 + r * min(max(rho, 0.0), alpha) for rho in (1.0, 2 / 1e-5, 1 / 1e-5)]
    # (the scale is computed in float32 from integer counts, as mergekit does)
    assert ramplus_tl(_inputs(r=r, alpha=alpha)).tolist() == pytest.approx(_reference(scale), rel=1e-7)
    assert ramplus_tl(_inputs(r=r, alpha=alpha)).tolist()[1] == pytest.approx(0.2 * 1.45)
