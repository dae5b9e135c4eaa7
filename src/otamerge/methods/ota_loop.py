"""The compiled loop of ota_kernel.py (numba). Imported only when a merge takes it: numba's
import and the cache load cost about 0.3 s, which small merges do not pay."""

from numba import float32, njit, prange

ZERO = float32(0.0)
ONE = float32(1.0)


@njit(inline="always")
def _weight(t, v, p, sf, eps, use_thr, thr):
    """(a_i, kept): (s v^p + eps), times 0 where the mask m = (t^2 v >= threshold) is off,
    in torch's order of float32 operations."""
    w = p * sf if sf != ONE else p
    w = w + eps
    if use_thr and not ((t * t) * v >= thr):
        return w * ZERO, False
    return w, True


@njit(parallel=True, cache=True)
def precond(base, fallback, xs, vs, ps, thr, use_thr, sf, eps, out):  # pragma: no cover (compiled)
    n = len(xs)
    for j in prange(base.size):
        b = base[j]
        total = ZERO
        kept = 0
        only = ZERO
        for i in range(n):  # the weights' sum, how many experts keep the entry, the last one's value
            w, keep = _weight(xs[i][j] - b, vs[i][j], ps[i][j], sf[i], eps, use_thr[i], thr[i])
            if keep:
                kept += 1
                only = xs[i][j]
            total = w if i == 0 else total + w
        if kept == 0:
            out[j] = fallback[j]
        elif kept == 1:
            out[j] = only
        else:
            acc = ZERO
            for i in range(n):  # the weights again (cheaper than storing them), normalised
                t = xs[i][j] - b
                w, _ = _weight(t, vs[i][j], ps[i][j], sf[i], eps, use_thr[i], thr[i])
                acc = acc + (w / total) * t
            out[j] = acc + b
