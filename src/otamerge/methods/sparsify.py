"""Per-tensor sparsification of task vectors: top-k by magnitude, breadcrumbs, DARE, DELLA.

The sparsifiers overwrite the task vector they are given (it is the merge's own copy):
a TIES merge of an 8B model then holds no second copy of each expert's embedding.

Selection is exact in count, with a documented tie rule: among equal magnitudes the
element with the lower flat index ranks first (top-k keeps lower indices first; the
breadcrumbs window, ranked ascending, also orders ties by lower index first). mergekit
uses an unstable argsort there, so on exact ties its choice is unspecified.
"""

from __future__ import annotations

import zlib

import torch

from otamerge.ffg.threshold import kth_largest

# Large tensors are worked on in slices of RADIX_CHUNK entries, so that selecting the top
# k of an 8B model's embedding needs tens of MB besides the tensor: from RADIX_MIN entries
# on, the k-th value comes from a radix select (exact) instead of torch.kthvalue (a copy
# plus int64 indices, 12 bytes an entry), and ties are found slice by slice.
RADIX_MIN = 1 << 22
RADIX_CHUNK = 1 << 20


def _fill_ties(mask: torch.Tensor, values: torch.Tensor, thr: torch.Tensor, need: int) -> torch.Tensor:
    """Also keep the first ``need`` entries equal to ``thr``, found slice by slice (nonzero
    over the whole tensor would allocate int64 indices for every entry)."""
    start = 0
    for part in values.split(RADIX_CHUNK):
        if need <= 0:
            break
        idx = torch.nonzero(part == thr).flatten()[:need]
        mask[start + idx] = True
        need -= idx.numel()
        start += part.numel()
    return mask


def _kth_largest(v: torch.Tensor, k: int) -> torch.Tensor:
    n = v.numel()
    if n >= RADIX_MIN and v.dtype == torch.float32 and bool((v >= 0).all()):
        (thr,), _ = kth_largest(lambda: v.split(RADIX_CHUNK), lambda total: [k])
        return torch.tensor(thr, dtype=v.dtype, device=v.device)
    return torch.kthvalue(v, n - k + 1).values


def _k_mask(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    v = values.reshape(-1)
    n = v.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=v.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=v.device)
    thr = _kth_largest(v, k if largest else n - k + 1)
    mask = v > thr if largest else v < thr
    return _fill_ties(mask, v, thr, k - int(torch.count_nonzero(mask)))  # sum() would make an int64 copy


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (flat) of the k largest values, ties to lower indices first."""
    return _k_mask(values, k, largest=True)


def bottom_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (flat) of the k smallest values, ties to lower indices first."""
    return _k_mask(values, k, largest=False)


def l1_factor(before: torch.Tensor, after: torch.Tensor, eps: float = 1e-7) -> torch.Tensor | None:
    """What brings the L1 norm ``after`` the drop back to ``before`` it (None: leave it)."""
    return None if before < eps or after < eps else before / after


def rescale_l1_(masked: torch.Tensor, before: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale ``masked`` in place back to the L1 norm ``before`` it had (mergekit's `rescale`)."""
    factor = l1_factor(before, masked.abs().sum(), eps)
    return masked if factor is None else masked.mul_(factor)


def _apply(delta: torch.Tensor, flat_mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Zero the dropped entries of ``delta`` in place (no copy of it, no float mask)."""
    before = delta.abs().sum() if rescale else None
    if delta.is_contiguous():  # by slices: multiplying by a bool tensor makes a float copy of it
        for d, m in zip(delta.view(-1).split(RADIX_CHUNK), flat_mask.split(RADIX_CHUNK)):
            d.mul_(m)  # (not masked_fill: a dropped negative entry stays -0.0, as in mergekit)
    else:
        delta.mul_(flat_mask.reshape(delta.shape))
    return rescale_l1_(delta, before) if rescale else delta


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False,
              scores: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the top ``density`` fraction of entries by |delta| (or by ``scores``, an
    importance of each entry; at least one)."""
    if density >= 1:
        return delta
    k = top_count(density, delta.numel())
    return _apply(delta, top_k_mask(delta.abs() if scores is None else scores, k), rescale)


def top_count(density: float, n: int) -> int:
    """How many entries magnitude() keeps."""
    return max(1, int(density * n))


def breadcrumbs_window(density: float, gamma: float, n: int, fork: bool) -> tuple[int, int] | None:
    """breadcrumbs() keeps the n_lo smallest entries but the n_bot smallest, as (n_lo, n_bot);
    None where the fork keeps nothing."""
    if fork and int(gamma * n) == 0:
        return None
    keep = int(density * n)
    n_bot = max(0, n - keep - int(gamma * n))
    return n_bot + keep, n_bot


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False,
                scores: torch.Tensor | None = None, fork: bool = False) -> torch.Tensor:
    """Drop the top ``gamma`` fraction by |delta| (or ``scores``) and the smallest entries,
    keeping ``density``; the outlier cut shrinks when needed to keep the target count.

    ``fork``: the paper's fork of mergekit keeps the sorted entries [n_bot:-n_top], an
    empty slice when int(gamma * n) is 0, so such a tensor keeps nothing (the merge gives
    it the base); mergekit 0.1.5 keeps [n_bot:n_bot + keep] and drops no outlier there."""
    if density >= 1:
        return delta
    window = breadcrumbs_window(density, gamma, delta.numel(), fork)
    if window is None:
        return delta.mul_(0)  # (not zero_(): a negative entry becomes -0.0, as the fork's mask gives)
    w = delta.abs() if scores is None else scores
    return _apply(delta, bottom_k_mask(w, window[0]) & ~bottom_k_mask(w, window[1]), rescale)


def dare(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """Drop entries at random with keep probability ``density`` (mask drawn on the CPU
    from a seeded generator, so the result does not depend on the device)."""
    if density >= 1:
        return delta
    return _apply(delta, bernoulli(delta.numel(), density, generator).to(delta.device), rescale)


def della_probabilities(magnitudes: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probability of each entry of rows of |delta| (rows x n, fp32): from
    density - epsilon for a row's smallest magnitude, rising linearly with its rank, to
    density + epsilon for the largest (mergekit 0.1.5's della_magprune). Equal magnitudes
    rank by index, lower first (a stable sort; mergekit's argsort is unstable). A row of
    one entry keeps it with probability ``density`` (mergekit divides 0 by 0 there)."""
    rows, n = magnitudes.shape
    order = torch.argsort(magnitudes, dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(rows, n))
    norm = ranks.to(torch.float32).div_(max(n - 1, 1)) if n > 1 else torch.full((rows, n), 0.5)
    return norm.mul_(2 * epsilon).add_(density - epsilon)


def della_mask(abs_rows, shape: torch.Size, density: float, epsilon: float,
               generator: torch.Generator) -> torch.Tensor:
    """DELLA's kept entries (flat, bool, CPU) of a 1-D or 2-D task vector whose rows
    ``abs_rows(a, b)`` gives as |delta| (rows a to b, fp32): drawn row block by row block
    in order from the generator, so the mask does not depend on the block size."""
    if len(shape) > 2:
        raise ValueError(f"della ranks the rows of 1-D and 2-D tensors, not of a tensor of shape {tuple(shape)}")
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(f"della: density {density} +/- epsilon {epsilon} must lie in (0, 1) (as mergekit requires)")
    rows, n = (1, 1) if len(shape) == 0 else (1, shape[0]) if len(shape) == 1 else shape
    kept = torch.empty(rows * n, dtype=torch.bool)
    step = max(1, RADIX_CHUNK // max(n, 1))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        probs = della_probabilities(abs_rows(a, b).reshape(b - a, n).float().cpu(), density, epsilon)
        kept[a * n:b * n] = torch.bernoulli(probs, generator=generator).bool().view(-1)
    return kept


def della(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator,
          rescale: bool = True) -> torch.Tensor:
    """DELLA's magnitude-ranked random drop (MAGPRUNE): keep each entry with its rank's
    probability (della_probabilities), then rescale to the task vector's L1 norm."""
    if density >= 1:
        return delta
    if density <= 0:
        return delta.mul_(0)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    mask = della_mask(lambda a, b: rows[a:b].abs(), delta.shape, density, epsilon, generator)
    return _apply(delta, mask.to(delta.device), rescale)


def bernoulli(n: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """n draws (bool, CPU) of keep probability ``density``: the generator draws one entry
    after the other, so n draws then m give the same mask as n + m draws at once."""
    return torch.bernoulli(torch.full((n,), density, dtype=torch.float32), generator=generator).bool()


def model_generator(seed: int, tensor: str, model_index: int) -> torch.Generator:
    """A CPU generator per (seed, tensor, model): random masks do not depend on the order
    in which tensors are processed, on chunking, or on the device."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{tensor}/{model_index}".encode()))


def importance(trim_by: str, delta: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor | None:
    """What trimming ranks entries by: None for |delta| (mergekit's rule); v * delta^2 for
    fisher (v: Adam's second moment) and sparsegpt (v: the OBS importance, hessians.py)."""
    if trim_by == "magnitude" or v is None:
        return None
    return delta.square().mul_(v)
