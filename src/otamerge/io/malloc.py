"""Keep freed chunk-sized memory in the process instead of returning it to the kernel.

glibc serves large allocations (a row chunk's fp32 tensors and a method's temporaries)
with fresh mmaps and unmaps them when freed, so every chunk faults its pages in again:
on OTA that was a quarter of the merge's CPU time, in the kernel. Served from the heap
and kept there on free, the same few megabytes are reused chunk after chunk; memory
stays bounded by the largest chunk's working set.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LIMIT = 32 << 20  # glibc's largest mmap threshold; whole tensors above it are still mapped


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process, no-op elsewhere);
    whether they are set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LIMIT)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * LIMIT))
