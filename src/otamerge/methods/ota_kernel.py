"""OTA+FFG's paper mode (base, precond, no rescale) as one compiled loop over the entries.

The torch path (``ota._precond_fused``) makes about a dozen passes over memory per expert
(difference, weight, epsilon, saliency, mask, kept count, single-expert value, running
total, division, product, sum); on a CPU memory traffic, not arithmetic, is its cost. This
kernel (numba, compiled once and cached on disk) reads each entry of the base, the experts,
their moments and the moments' power once and writes the result once, with the same float32
operations in the same order, so the same bits (tests/test_ota.py). The power
v^p stays torch's (one pass per expert): torch's float32 sqrt is not always the correctly
rounded one a compiled loop would take, so computing it here would change bits.

Used on CPU for float32 tensors of at least ``MIN_ELEMENTS`` entries (a row chunk of
``io.checkpoint.CHUNK_BYTES`` holds up to 2^18), where the one-time import and cache load
(about 0.8 s; the first compile about 1.3 s more) pay for themselves; the demo's tensors
(at most 36,864 entries) keep the torch path, so its merges never import numba.
"""

from __future__ import annotations

from functools import lru_cache

import torch

MIN_ELEMENTS = 1 << 16


@lru_cache(maxsize=1)
def _kernel():
    """The compiled loop (ota_loop.precond), or None where numba is not installed."""
    try:
        from otamerge.methods.ota_loop import precond
    except ImportError:
        return None
    return precond


def usable(base: torch.Tensor, models: list[torch.Tensor], vs: list[torch.Tensor]) -> bool:
    """Whether the compiled loop takes these tensors: CPU, float32, contiguous, large enough."""
    tensors = [base, *models, *vs]
    return (base.numel() >= MIN_ELEMENTS and all(t.device.type == "cpu" and t.dtype == torch.float32
                                                 and t.is_contiguous() and t.shape == base.shape for t in tensors)
            and _kernel() is not None)


def precond(base: torch.Tensor, fallback: torch.Tensor, models: list[torch.Tensor], vs: list[torch.Tensor],
            powers: list[torch.Tensor], thresholds: list[float | None], scales: list[float],
            eps: float) -> torch.Tensor:
    """The merged tensor: sum_i a_i t_i / sum_i a_i + base, a_i = m_i (s_i v_i^p + eps); an
    entry one expert keeps is its value, one none keeps is ``fallback``'s."""
    import numba
    import numpy as np

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))  # as torch's
    out = torch.empty_like(base)
    flat = [t.reshape(-1).numpy() for t in (base, fallback)]
    _kernel()(*flat, tuple(t.reshape(-1).numpy() for t in models), tuple(t.reshape(-1).numpy() for t in vs),
              tuple(t.reshape(-1).numpy() for t in powers),
              np.array([0.0 if t is None else t for t in thresholds], dtype=np.float32),
              np.array([t is not None for t in thresholds]), np.array(scales, dtype=np.float32),
              np.float32(eps), out.reshape(-1).numpy())
    return out
