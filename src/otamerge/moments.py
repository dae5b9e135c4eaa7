"""Second moments (Adam's exp_avg_sq): low-rank approximations used in place of v."""

from __future__ import annotations

import torch


def rank1(v: torch.Tensor) -> torch.Tensor:
    """AdaFactor-style rank-1 approximation of a non-negative matrix:
    v_hat = r c^T / sum(v) with r the row sums and c the column sums (zeros if v is 0).
    1-D tensors are returned as they are."""
    if v.dim() != 2:
        return v
    total = v.sum()
    if total == 0:
        return torch.zeros_like(v)
    return torch.outer(v.sum(dim=1), v.sum(dim=0) / total)


def rank_r(v: torch.Tensor, r: int) -> torch.Tensor:
    """Truncated SVD of rank ``r``, negatives clipped to 0 (v is a non-negative curvature)."""
    if v.dim() != 2:
        return v
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    return torch.relu((u[:, :r] * s[:r]) @ vh[:r])
