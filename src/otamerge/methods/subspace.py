"""Merges in the singular subspaces of the task vectors, tensor by tensor.

For task vectors t_i = w_i - w_0 of T models, every 2-D tensor (a weight matrix, the
embeddings included) is merged from singular value decompositions, every other tensor
(norms, biases) is the mean of the t_i; the merged model is w_0 + scale * merged:

    TSV-M  (Gargiulo et al., 2025, arXiv 2412.00081): each t_i keeps its top k/T singular
           triplets (k = min of the matrix's sides); their left and their right singular
           vectors, stacked, are replaced by the nearest orthonormal matrices (the polar
           factor, U V^T of their SVD), and the merged matrix is U_o diag(s) V_o^T.
    Iso-C  (Marczak et al., 2025, arXiv 2502.04959): the sum of the t_i with every
           singular value replaced by their mean (an isotropic spectrum).
    Iso-CTS (same paper): the sum's top singular vectors span a common subspace (a
           fraction ``common_space_fraction`` of k, rounded so that the rest splits evenly
           among the T tasks); each t_i, with the common subspace projected out, gives its
           top (k - common)/T singular vectors; all of them, orthonormalised by the polar
           factor, carry the mean of the kept singular values.

The scale is ``alpha`` (TSV-M) or ``scaling_factor`` (Iso-C, Iso-CTS), as in the papers'
code. The arithmetic is fp32 (fp64 for fp64 inputs) and whole-tensor, with the products and
means in the order of FusionBench's code, so that TSV-M and Iso-C give its bits
(benchmarks/fusionbench_agreement.py). Iso-CTS differs on purpose in one product: it projects
as U (U^T t), where FusionBench forms U U^T, an m x m matrix (9.7 GB in fp32 for a
49152-token embedding); in FusionBench's order it gives FusionBench's bits too.
"""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs


def _deltas(inputs: TensorInputs) -> list[torch.Tensor]:
    return [m - inputs.base for m in inputs.models]


def _running_mean(deltas: list[torch.Tensor]) -> torch.Tensor:
    """The mean as the TSV-M and Iso-CTS code takes it (m += (t_i - m) / i), same bits."""
    mean = deltas[0].clone()
    for i, t in enumerate(deltas[1:], start=2):
        mean += (t - mean) / i
    return mean


def _sum_mean(deltas: list[torch.Tensor]) -> torch.Tensor:
    """The mean as the Iso-C code takes it (sum / T)."""
    return sum(deltas[1:], deltas[0]) / len(deltas)


def _polar(a: torch.Tensor) -> torch.Tensor:
    """The orthonormal matrix nearest to ``a`` (its polar factor): U V^T of a = U S V^T."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def _isotropic(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """U diag(mean(s)) V^T: every singular value replaced by their mean."""
    return torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), vh))


def _merged(inputs: TensorInputs, scale_key: str, matrix, mean) -> torch.Tensor:
    deltas = _deltas(inputs)
    merged = matrix(deltas, inputs.params) if inputs.base.dim() == 2 else mean(deltas)
    return inputs.base + inputs.params[scale_key] * merged


def _tsv(deltas: list[torch.Tensor], params: dict) -> torch.Tensor:
    k = min(deltas[0].shape)
    r = int(k * (1 / len(deltas)))  # singular triplets kept per task, as the paper's code rounds k / T
    us, ss, vhs = [], [], []
    for t in deltas:
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        us.append(u[:, :r]), ss.append(s[:r]), vhs.append(vh[:r])
    pad = k - r * len(deltas)  # the stacked factors keep k columns (rows), the rest zero
    u = torch.cat([*us, deltas[0].new_zeros(deltas[0].shape[0], pad)], dim=1)
    s = torch.cat([*ss, deltas[0].new_zeros(pad)])
    vh = torch.cat([*vhs, deltas[0].new_zeros(pad, deltas[0].shape[1])], dim=0)
    u_u, _, vh_u = torch.linalg.svd(u, full_matrices=False)
    u_v, _, vh_v = torch.linalg.svd(vh, full_matrices=False)
    return torch.linalg.multi_dot((u_u, vh_u, torch.diag(s), u_v, vh_v))  # the paper's code's product order


def _iso_c(deltas: list[torch.Tensor], params: dict) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(_sum_mean(deltas) * len(deltas), full_matrices=False)  # the sum, as its code has it
    return _isotropic(u, s, vh)


def _iso_cts(deltas: list[torch.Tensor], params: dict) -> torch.Tensor:
    k, n_tasks = min(deltas[0].shape), len(deltas)
    common = int(k * params["common_space_fraction"])
    common = k - round((k - common) / n_tasks) * n_tasks  # the task-specific part splits evenly
    per_task = (k - common) // n_tasks
    u, s, vh = torch.linalg.svd(sum(deltas[1:], deltas[0]), full_matrices=False)
    uc = u[:, :common]
    us, ss, vhs = [], [], []
    for t in deltas:
        # the common subspace projected out; uc (uc^T t), not (uc uc^T) t: no m x m matrix
        ut, st, vht = torch.linalg.svd(t - uc @ (uc.T @ t), full_matrices=False)
        us.append(ut[:, :per_task]), ss.append(st[:per_task]), vhs.append(vht[:per_task])
    u_all = _polar(torch.cat([*us, uc], dim=1))
    vh_all = _polar(torch.cat([*vhs, vh[:common]], dim=0))
    return _isotropic(u_all, torch.cat([*ss, s[:common]]), vh_all)


def tsv_m(inputs: TensorInputs) -> torch.Tensor:
    return _merged(inputs, "alpha", _tsv, _running_mean)


def iso_c(inputs: TensorInputs) -> torch.Tensor:
    return _merged(inputs, "scaling_factor", _iso_c, _sum_mean)


def iso_cts(inputs: TensorInputs) -> torch.Tensor:
    return _merged(inputs, "scaling_factor", _iso_cts, _running_mean)


_WHOLE = lambda p, mp: True  # noqa: E731  (singular value decompositions of whole matrices)
IMPLEMENTS = {
    "tsv_m": Implementation(tsv_m, whole_tensor=_WHOLE),
    "iso_c": Implementation(iso_c, whole_tensor=_WHOLE),
    "iso_cts": Implementation(iso_cts, whole_tensor=_WHOLE),
}
