"""Row chunks of every input, read one chunk ahead on a background thread.

While the engine merges chunk i, one thread reads chunk i+1 of every input (positioned
reads) and widens it to the compute dtype; both release the GIL, so on two cores the
reading overlaps the arithmetic. Widened values go into buffers that are reused (two
sets that alternate): fresh fp32 tensors per chunk cost page faults that were as dear
as the arithmetic. Memory stays bounded by two chunks per input.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ChunkRead:
    """Rows ``rows`` (None: all) of tensor ``name`` of every source, widened to ``dtype``."""

    name: str
    rows: tuple[int, int] | None
    dtype: torch.dtype


class _Buffers:
    """One set of reusable compute-dtype buffers, one per source, grown as needed."""

    def __init__(self, n: int):
        self.flat: list[torch.Tensor | None] = [None] * n

    def widen(self, k: int, raw: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if raw.dtype == dtype and raw.device == device:
            return raw  # already a fresh tensor of the compute dtype: used as it is
        buf = self.flat[k]
        if buf is None or buf.numel() < raw.numel() or buf.dtype != dtype:
            buf = self.flat[k] = torch.empty(raw.numel(), dtype=dtype, device=device)
        # widening (bf16/fp16 -> fp32, any -> fp64) is exact: the same bits as .to()
        return buf[:raw.numel()].view(raw.shape).copy_(raw)


class ReadAhead:
    """Serves ``reads`` in order (``take``), each one submitted to a single reader thread
    as soon as the one before it is taken. Use as a context manager: leaving it waits
    for the read in flight and stops the thread, on errors and interrupts too."""

    def __init__(self, sources: list[Any], reads: list[ChunkRead], device: torch.device):
        self.sources, self.reads, self.device = sources, reads, device
        self._sets = [_Buffers(len(sources)), _Buffers(len(sources))]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="otamerge-read")
        self._pos = 0
        self._pending: Future | None = self._submit(0)

    def _submit(self, i: int) -> Future | None:
        if i >= len(self.reads):
            return None
        return self._pool.submit(self._load, self.reads[i], self._sets[i % 2])

    def _load(self, read: ChunkRead, bufs: _Buffers) -> list[torch.Tensor]:
        return [bufs.widen(k, src.get(read.name, read.rows), read.dtype, self.device)
                for k, src in enumerate(self.sources)]

    def take(self, name: str, rows: tuple[int, int] | None) -> list[torch.Tensor]:
        """The next chunk, which must be ``name``'s ``rows``: one tensor per source, valid
        until the next call (which starts refilling its buffers)."""
        read = self.reads[self._pos] if self._pos < len(self.reads) else None
        if read is None or (read.name, read.rows) != (name, rows):
            raise RuntimeError(f"read-ahead out of order: asked for {name} {rows}, planned {read}")
        values = self._pending.result()  # (an error of the read is raised here, in order)
        self._pos += 1
        self._pending = self._submit(self._pos)
        return values

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._pool.shutdown(wait=True)  # a read in flight finishes; its error is dropped

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
