"""TSV-M, Iso-C and Iso-CTS against the papers' definitions, computed here in fp64 with
numpy (not with the code under test): the singular spectra and subspaces each one claims."""

import numpy as np
import pytest
import torch

from otamerge.methods.base import TensorInputs
from otamerge.methods.subspace import iso_c, iso_cts, tsv_m


def _inputs(shape, n=3, seed=0, **params):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    models = [base + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
    return TensorInputs("w", base, models, [None] * n, [{}] * n, params)


def _deltas(inputs):
    return [(m - inputs.base).numpy() for m in inputs.models]


def _polar(a):
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    return u @ vh


def test_iso_c_is_the_sum_with_a_flat_spectrum():
    inputs = _inputs((12, 7), scaling_factor=1.3)
    total = sum(_deltas(inputs))
    u, s, vh = np.linalg.svd(total, full_matrices=False)
    expected = inputs.base.numpy() + 1.3 * s.mean() * u @ vh
    got = iso_c(inputs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    # its spectrum: every singular value of (merged - base) / 1.3 equal to the mean of the sum's
    np.testing.assert_allclose(np.linalg.svd((got - inputs.base).numpy() / 1.3, compute_uv=False), s.mean(),
                               rtol=1e-12)


def test_tsv_m_keeps_each_tasks_top_triplets_on_orthonormal_bases():
    inputs = _inputs((10, 9), n=3, alpha=1.0)  # k = 9: three triplets per task
    us, ss, vhs = zip(*(np.linalg.svd(t, full_matrices=False) for t in _deltas(inputs)))
    u = np.concatenate([x[:, :3] for x in us], axis=1)
    s = np.concatenate([x[:3] for x in ss])
    vh = np.concatenate([x[:3] for x in vhs], axis=0)
    expected = inputs.base.numpy() + _polar(u) @ np.diag(s) @ _polar(vh)
    got = tsv_m(inputs).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # with orthonormal bases the merged matrix has exactly the kept singular values
    np.testing.assert_allclose(np.linalg.svd(got - inputs.base.numpy(), compute_uv=False), np.sort(s)[::-1],
                               rtol=1e-10)


def test_tsv_m_of_task_vectors_in_orthogonal_subspaces_is_their_sum_of_truncations():
    """Tasks whose singular vectors are mutually orthogonal do not interfere: TSV-M is then
    the sum of each one's rank-k/T truncation, which the paper's construction reduces to."""
    rng = np.random.default_rng(1)
    q_left, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    q_right, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    deltas = [q_left[:, 4 * i:4 * i + 4] @ np.diag(rng.uniform(1, 2, 4)) @ q_right[:, 4 * i:4 * i + 4].T
              for i in range(2)]
    base = torch.zeros(8, 8, dtype=torch.float64)
    inputs = TensorInputs("w", base, [base + torch.from_numpy(d) for d in deltas], [None] * 2, [{}] * 2,
                          {"alpha": 1.0})
    np.testing.assert_allclose(tsv_m(inputs).numpy(), deltas[0] + deltas[1], atol=1e-12)


def test_iso_cts_spans_the_common_and_task_directions_at_one_singular_value():
    inputs = _inputs((16, 10), n=3, scaling_factor=1.0, common_space_fraction=0.5)
    deltas = _deltas(inputs)
    # k = 10, common int(5) -> the 5 task-specific dimensions round to 6 = 3 x 2: common 4
    u, s, vh = np.linalg.svd(sum(deltas), full_matrices=False)
    uc = u[:, :4]
    parts = [np.linalg.svd(t - uc @ uc.T @ t, full_matrices=False) for t in deltas]
    big_u = np.concatenate([p[0][:, :2] for p in parts] + [uc], axis=1)
    big_vh = np.concatenate([p[2][:2] for p in parts] + [vh[:4]], axis=0)
    mean = np.concatenate([p[1][:2] for p in parts] + [s[:4]]).mean()
    expected = inputs.base.numpy() + mean * _polar(big_u) @ _polar(big_vh)
    got = iso_cts(inputs).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(got - inputs.base.numpy(), compute_uv=False), mean, rtol=1e-10)


@pytest.mark.parametrize("merge, params", [(tsv_m, {"alpha": 0.5}), (iso_c, {"scaling_factor": 0.5}),
                                           (iso_cts, {"scaling_factor": 0.5, "common_space_fraction": 0.8})])
def test_other_tensors_take_the_mean_task_vector(merge, params):
    inputs = _inputs((6,), n=4, **params)
    expected = inputs.base.numpy() + 0.5 * np.mean(_deltas(inputs), axis=0)
    np.testing.assert_allclose(merge(inputs).numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method, params", [("tsv_m", {"alpha": 0.7}), ("iso_c", {"scaling_factor": 0.7}),
                                            ("iso_cts", {"scaling_factor": 0.7, "common_space_fraction": 0.6})])
def test_a_mergekit_style_config_runs_each_method_tensor_by_tensor(tmp_path, method, params):
    """Through the streaming engine: every tensor of a tiny Llama family, fp32, equal to the
    method applied to that tensor alone in fp64 (then rounded once)."""
    import yaml
    from safetensors.torch import load_file

    from checkpoints import make_family
    from otamerge.merge import MergeOptions, merge_file
    from otamerge.methods.registry import implementation

    fam = make_family(tmp_path / "fam", n_experts=3)
    cfg = tmp_path / "m.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": method, "base_model": str(fam["base"]), "parameters": params,
                                   "models": [{"model": str(fam[f"expert{i}"])} for i in range(3)]}))
    merged = load_file(str(merge_file(cfg, tmp_path / "out", MergeOptions(progress=False)) / "model.safetensors"))
    base = load_file(str(fam["base"] / "model.safetensors"))
    experts = [load_file(str(fam[f"expert{i}"] / "model.safetensors")) for i in range(3)]
    merge = implementation(method).merge
    for name, b in base.items():
        exact = merge(TensorInputs(name, b.double(), [e[name].double() for e in experts], [None] * 3, [{}] * 3,
                                   params))
        assert merged[name].dtype == b.dtype
        torch.testing.assert_close(merged[name], exact.to(b.dtype), rtol=1e-5, atol=1e-6, msg=name)
