"""OTA checked against an independent element-by-element computation (plain Python
floats in double precision), not against the engine's own vectorised code."""

from __future__ import annotations

import math
import random

import pytest
import torch

from otamerge.config import parse_config
from otamerge.methods.base import TensorInputs
from otamerge.methods import ota as ota_mod
from otamerge.methods.ota import hybrid_norm, ota

N = 3


def _params(**over):
    cfg = parse_config({"merge_method": "ota", "base_model": "b",
                        "models": [{"model": f"m{i}", "parameters": {"preconditioner_path": "x"}}
                                   for i in range(N)],
                        "parameters": {"epsilon": "1e-26"} | over})
    return cfg.params, [m.params for m in cfg.models]


def _data(seed=0, shape=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(N)]
    moments = [torch.exp(torch.empty(shape).uniform_(-20, 0, generator=g)) for _ in range(N)]
    return base, models, moments


def _run(base, models, moments, params, model_params, thresholds=None, name="model.layers.0.mlp.up_proj.weight"):
    model_params = [dict(mp) for mp in model_params]
    for mp, t in zip(model_params, thresholds or [None] * N):
        mp["precond_threshold"] = t
    return ota(TensorInputs(name, base, models, moments, model_params, params))


def _thresholds(base, models, moments, q=0.5):
    """Per-model thresholds at the q-quantile of that model's saliency (so some entries of
    every model are masked and some entries are masked in every model)."""
    return [float(torch.quantile(v * (x - base) ** 2, q)) for x, v in zip(models, moments)]


def _expected(base, models, moments, thr, power=0.5, eps=1e-26, mode="precond", fallback_base=True,
              no_base=False):
    out = torch.empty_like(base, dtype=torch.float64)
    flat = [t.reshape(-1).tolist() for t in (base, *models, *moments)]
    b, xs, vs = flat[0], flat[1:1 + N], flat[1 + N:]
    for j in range(len(b)):
        taus = [xs[i][j] - b[j] for i in range(N)]
        if no_base:
            m = [thr[i] is None or vs[i][j] >= thr[i] for i in range(N)]
        else:
            m = [thr[i] is None or vs[i][j] * taus[i] ** 2 >= thr[i] for i in range(N)]
        w = [(vs[i][j] ** power + eps) * m[i] for i in range(N)]
        if not any(m):
            val = b[j] if fallback_base and not no_base else sum(xs[i][j] for i in range(N)) / N
        elif no_base:
            val = sum(w[i] * xs[i][j] for i in range(N)) / sum(w)
        elif mode == "precond":
            val = b[j] + sum(w[i] * taus[i] for i in range(N)) / sum(w)
        else:  # linear: masked task vectors averaged over all experts
            val = b[j] + sum(taus[i] * m[i] for i in range(N)) / N
        out.view(-1)[j] = val
    return out


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_precond_mode_with_masks_and_fallback_to_base(power):
    base, models, moments = _data(1)
    thr = _thresholds(base, models, moments)
    params, mps = _params(power=power, fallback_to_base=True)
    got = _run(base, models, moments, params, mps, thr)
    want = _expected(base, models, moments, thr, power=power)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-7)
    masked_everywhere = torch.stack([v * (x - base) ** 2 < t for x, v, t in zip(models, moments, thr)]).all(0)
    assert masked_everywhere.any() and torch.equal(got[masked_everywhere], base[masked_everywhere])


def test_power_changes_the_result():
    base, models, moments = _data(2)
    p1, mps = _params(power=1.0)
    p5, _ = _params(power=0.5)
    assert not torch.allclose(_run(base, models, moments, p1, mps), _run(base, models, moments, p5, mps))


def test_without_fallback_fully_masked_entries_take_the_mean_of_the_models():
    base, models, moments = _data(3)
    thr = _thresholds(base, models, moments, q=0.7)
    params, mps = _params(fallback_to_base=False)
    got = _run(base, models, moments, params, mps, thr)
    assert torch.allclose(got.double(), _expected(base, models, moments, thr, fallback_base=False), rtol=1e-6, atol=1e-7)


def test_linear_mode_applies_the_masks():
    base, models, moments = _data(4)
    thr = _thresholds(base, models, moments)
    params, mps = _params(masked_task_vector_merge_method="linear", fallback_to_base=True)
    got = _run(base, models, moments, params, mps, thr)
    assert torch.allclose(got.double(), _expected(base, models, moments, thr, mode="linear"), rtol=1e-6, atol=1e-7)
    unmasked = _run(base, models, moments, params, mps)
    assert not torch.allclose(got, unmasked)


def test_ties_mode_trims_elects_signs_and_averages():
    base, models, moments = _data(5)
    thr = _thresholds(base, models, moments, q=0.3)
    params, mps = _params(masked_task_vector_merge_method="ties", ties_density=0.5, fallback_to_base=True)
    got = _run(base, models, moments, params, mps, thr)
    n = base.numel()
    k = int(0.5 * n)
    trimmed = []
    for x, v, t in zip(models, moments, thr):
        tau = [(a - b) * (s * (a - b) ** 2 >= t) for a, b, s in
               zip(x.reshape(-1).tolist(), base.reshape(-1).tolist(), v.reshape(-1).tolist())]
        order = sorted(range(n), key=lambda j: (-abs(tau[j]), j))[:k]
        trimmed.append([tau[j] if j in set(order) else 0.0 for j in range(n)])
    want = []
    for j in range(n):
        col = [trimmed[i][j] for i in range(N)]
        sign = 1.0 if sum(col) >= 0 else -1.0
        kept = [c for c in col if c != 0 and math.copysign(1.0, c) == sign]
        all_masked = all(v.reshape(-1)[j] * (x.reshape(-1)[j] - base.reshape(-1)[j]) ** 2 < t
                         for x, v, t in zip(models, moments, thr))
        want.append(base.reshape(-1)[j].item() + (0.0 if all_masked else sum(kept) / N))
    assert torch.allclose(got.reshape(-1).double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_rank1_moments_are_row_sums_times_column_sums_over_total():
    base, models, moments = _data(6, shape=(4, 3))
    params, mps = _params()
    for mp in mps:
        mp["rank1_approx"] = True
    got = _run(base, models, moments, params, mps)
    approx = []
    for v in moments:
        rows = [[float(v[r, c]) for c in range(3)] for r in range(4)]
        total = sum(map(sum, rows))
        approx.append(torch.tensor([[sum(rows[r]) * sum(rows[i][c] for i in range(4)) / total
                                     for c in range(3)] for r in range(4)], dtype=torch.float64))
    want = _expected(base.double(), [m.double() for m in models], approx, [None] * N)
    assert torch.allclose(got.double(), want, rtol=1e-5)


def test_no_base_is_curvature_weighted_average_and_fisher_at_power_one():
    _, models, moments = _data(7)
    params, mps = _params(power=1.0)
    got = ota(TensorInputs("w", None, models, moments, mps, params))
    fisher = sum(v * x for v, x in zip(moments, models)) / sum(moments)
    assert torch.allclose(got, fisher, rtol=1e-5)
    thr = [float(torch.quantile(v, 0.5)) for v in moments]
    params, mps = _params(power=0.5)
    for mp, t in zip(mps, thr):
        mp["precond_threshold"] = t
    got = ota(TensorInputs("w", None, models, moments, mps, params))
    want = _expected(models[0], models, moments, thr, no_base=True)
    assert torch.allclose(got.double(), want, rtol=1e-6)


def test_global_normalise_divides_each_weight_by_its_mean():
    base, models, moments = _data(8)
    params, mps = _params(normalise="global")
    got = _run(base, models, moments, params, mps)
    pre = [v.double().sqrt() / (v.double().sqrt().mean() + 1e-26) for v in moments]
    want = base.double() + sum(p * (x.double() - base.double()) for p, x in zip(pre, models)) / sum(pre)
    assert torch.allclose(got.double(), want, rtol=1e-5)


def test_rescale_restores_the_masked_task_vector_norm():
    base, models, moments = _data(9, shape=(64,))
    thr = _thresholds(base, models, moments, q=0.8)
    params, mps = _params(rescale=True, masked_task_vector_merge_method="linear", fallback_to_base=True)
    one = lambda t: t[:1]  # noqa: E731
    got = ota(TensorInputs("norm.weight", base, one(models), one(moments),
                           [dict(mps[0], precond_threshold=thr[0])], params))
    tau = models[0] - base
    rms = math.sqrt(sum(t * t for t in tau.tolist()) / 64)
    assert hybrid_norm(got - base, "norm.weight") == pytest.approx(rms, rel=1e-5)
    assert int(((got - base) != 0).sum()) == int((moments[0] * tau**2 >= thr[0]).sum())


def test_single_expert_equals_the_graft_exactly():
    rnd = random.Random(0)
    base, models, moments = _data(10, shape=(50, 7))
    params, mps = _params()
    for _ in range(5):
        t = rnd.choice((moments[0] * (models[0] - base) ** 2).reshape(-1).tolist())
        got = ota(TensorInputs("w", base, models[:1], moments[:1], [dict(mps[0], precond_threshold=t)],
                               dict(params, fallback_to_base=True)))
        graft = torch.where(moments[0] * (models[0] - base) ** 2 >= t, models[0], base)
        assert torch.equal(got, graft)


def test_top_k_and_window_masks_count_exactly_with_ties_to_lower_indices():
    from otamerge.methods.sparsify import bottom_k_mask, top_k_mask

    v = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 0.0])
    assert top_k_mask(v, 2).tolist() == [True, False, True, False, False, False]
    assert top_k_mask(v, 4).tolist() == [True, False, True, True, True, False]
    assert bottom_k_mask(v, 3).tolist() == [False, True, False, True, False, True]
    assert bottom_k_mask(v, 4).tolist() == [True, True, False, True, False, True]
    assert int(top_k_mask(torch.zeros(10), 3).sum()) == 3


def _bf16_family(seed, shape):
    """bf16-valued inputs as the engine gets them (upcast to fp32), some task-vector
    entries exactly zero, fp32 moments spanning 40 binades."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).bfloat16().float()
    models = []
    for _ in range(N):
        x = (base + 0.05 * torch.randn(shape, generator=g)).bfloat16().float()
        models.append(torch.where(torch.rand(shape, generator=g) < 0.1, base, x))
    moments = [torch.exp(torch.empty(shape).uniform_(-30, 0, generator=g)) for _ in range(N)]
    return base, models, moments


@pytest.mark.parametrize("power", [0.5, 1.0, 0.75])
@pytest.mark.parametrize("rank1_moments", [False, True])
@pytest.mark.parametrize("masks", ["every", "some", "none"])
@pytest.mark.parametrize("fallback", [True, False])
@pytest.mark.parametrize("path", ["torch", "kernel"])
def test_fused_path_gives_the_general_paths_bits(power, rank1_moments, masks, fallback, path, monkeypatch):
    """ota() in the paper's mode takes the fused path: in place in torch, or the compiled
    one-pass loop (ota_kernel.py) for tensors of MIN_ELEMENTS entries and more (lowered
    here); _general is the plain whole-tensor computation. Equal bit for bit."""
    from otamerge.methods import ota_kernel

    calls = []
    kernel = ota_kernel.precond
    monkeypatch.setattr(ota_kernel, "precond", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(ota_kernel, "MIN_ELEMENTS", 0 if path == "kernel" else 1 << 62)
    shape = (199, 256)
    base, models, moments = _bf16_family(7, shape)
    if rank1_moments:  # what a rank-1 moments file gives a chunk: an outer product
        moments = [torch.outer(v.mean(1), v.mean(0) / v.mean()) for v in moments]
    thr = {"every": _thresholds(base, models, moments), "none": [None] * N,
           "some": [None, *_thresholds(base, models, moments)[1:]]}[masks]
    params, mps = _params(power=power, fallback_to_base=fallback)
    mps = [dict(mp, precond_threshold=t, scaling_factor=s) for mp, t, s in zip(mps, thr, (1.0, 0.5, 2.0))]
    inputs = TensorInputs("model.layers.0.mlp.up_proj.weight", base, models, moments, mps, params)
    fused = ota(inputs)
    general = ota_mod._general(inputs, moments, thr)
    assert fused.dtype == general.dtype == torch.float32 and len(calls) == (path == "kernel")
    assert torch.equal(fused.view(torch.int32), general.view(torch.int32))  # -0.0 and +0.0 told apart
