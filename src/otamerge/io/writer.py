"""Streaming safetensors writer: headers planned up front, bytes written as computed.

All tensor names, shapes and dtypes are known before merging starts, so each shard's
header (with every offset) is written first and tensors, or row chunks of them, are
appended in order as they are computed: nothing is buffered beyond the current chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from otamerge.io.checkpoint import INDEX_FILE, SINGLE_FILE

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(tensors: list[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _header(shard: list[TensorPlan], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in shard:
        entries[t.name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                           "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


class ShardedWriter:
    """Write planned tensors into ``out_dir`` in plan order, chunk by chunk."""

    def __init__(self, out_dir: Path, tensors: list[TensorPlan], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None):
        self.out_dir = Path(out_dir)
        self.shards = plan_shards(tensors, max_shard_bytes)
        self.files = shard_names(len(self.shards))
        self.metadata = {"format": "pt", **(metadata or {})}
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._pos = 0          # index into _order of the tensor being written
        self._written = 0      # bytes of it written so far
        self._fh: BinaryIO | None = None
        self._shard = -1

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append ``chunk`` (a whole tensor or its next rows) to tensor ``name``."""
        shard, plan = self._order[self._pos]
        if plan.name != name or chunk.dtype != plan.dtype:
            raise RuntimeError(f"writer expected {plan.name} ({plan.dtype}), got {name} ({chunk.dtype})")
        if shard != self._shard:
            self._next_shard(shard)
        data = chunk.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._written += data.nbytes
        if self._written > plan.nbytes:
            raise RuntimeError(f"writer got more bytes than planned for {name}")
        if self._written == plan.nbytes:
            self._pos += 1
            self._written = 0

    def _next_shard(self, shard: int) -> None:
        if self._fh:
            self._fh.close()
        self._shard = shard
        self._fh = open(self.out_dir / self.files[shard], "wb")
        self._fh.write(_header(self.shards[shard], self.metadata))

    def close(self) -> None:
        """Finish the last shard and write the index (for more than one shard)."""
        if self._pos != len(self._order):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._order)} tensors")
        if self._fh:
            self._fh.close()
        if len(self.shards) > 1:
            weight_map = {t.name: f for f, shard in zip(self.files, self.shards) for t in shard}
            total = sum(t.nbytes for shard in self.shards for t in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
