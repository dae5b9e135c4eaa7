"""Lazy reading of safetensors checkpoints: one file or shards with an index.

Each file's header is parsed once; tensors, or row ranges of them, are read on demand
with positioned reads (os.pread) into fresh buffers. Not through mmap, as the
safetensors library does: mapped pages that were read stay in the process's resident
set until the file is closed, so a merge's RSS would grow with the model instead of
staying bounded by the chunk.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from otamerge.errors import OtaMergeError
from otamerge.io.model_config import check_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class Checkpoint:
    """Tensors of one model (or moments) file set, read lazily by name.

    ``label`` names the model in error messages (e.g. "expert math").
    """

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(path)
        self._files = _tensor_files(self.path, self.label)
        self._handles: dict[Path, _Shard] = {}
        if self._files:
            keys = {f: set(self._open(f).keys()) for f in dict.fromkeys(self._files.values())}
            for name, f in self._files.items():
                if name not in keys[f]:
                    raise OtaMergeError(f"{self.label}: {f} does not hold tensor {name} listed in its index")
            self._where = dict(self._files)
        else:  # a single file: its own header lists the tensors
            f = self.path if self.path.is_file() else self.path / SINGLE_FILE
            self._where = {n: f for n in self._open(f).keys()}
        if self.path.is_dir():
            check_config(self.path, self.label, self.names(), self.shape)

    def _open(self, f: Path) -> "_Shard":
        if f not in self._handles:
            if not f.is_file():
                raise OtaMergeError(f"{self.label}: file {f} is missing")
            self._handles[f] = _Shard(f, self.label)
        return self._handles[f]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> Path:
        if name not in self._where:
            raise OtaMergeError(f"{self.label}: tensor {name} not found in {self.path}")
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._open(self.file_of(name)).tensors[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self._open(self.file_of(name)).tensors[name][0]

    def file_metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the (first) file."""
        return self._open(next(iter(self._where.values()))).metadata if self._where else {}

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor, or rows ``start:stop`` of its first dimension."""
        return self._open(self.file_of(name)).read(name, rows)

    def prefetch(self, name: str) -> None:
        """Ask the kernel to start reading a tensor now (no wait), so the read overlaps
        the work on the tensor before it; a no-op for names this checkpoint lacks."""
        if name in self._where:
            self._open(self._where[name]).prefetch(name)

    def close(self) -> None:
        for shard in self._handles.values():
            shard.close()
        self._handles.clear()


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


MAX_HEADER = 100_000_000  # the safetensors format's limit on the header's length


def _metadata(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError("__metadata__ must map names to strings")
    return raw


def _entry(name: str, info: object) -> tuple[str, tuple[torch.dtype, tuple[int, ...], int, int]]:
    """One header entry checked: a known dtype, a shape of non-negative integers and
    offsets whose span is exactly the bytes of that dtype and shape."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name}: entry must have exactly dtype, shape and data_offsets")
    if not isinstance(info["dtype"], str) or info["dtype"] not in _DTYPES:
        raise ValueError(f"tensor {name}: unknown dtype {info['dtype']!r}")
    dtype, shape, offsets = _DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(x) is int for x in offsets):
        raise ValueError(f"tensor {name}: data_offsets {offsets!r} is not a pair of integers")
    a, b = offsets
    if a < 0 or b - a != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {name}: offsets {a}..{b} do not fit its dtype {info['dtype']} and shape {shape}")
    return name, (dtype, tuple(shape), a, b)


def _check_layout(tensors: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]], data_bytes: int) -> None:
    """Tensors tile the data buffer exactly, as the format requires: no gap, no overlap
    (a header that points two tensors at the same bytes is lying), no byte missing."""
    end = 0
    for name, (_, _, a, b) in sorted(tensors.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if a != end:
            raise ValueError(f"tensor {name}: data starts at byte {a}, expected {end} (overlap or gap)")
        end = b
    if end > data_bytes:
        raise ValueError(f"file is truncated ({data_bytes} data bytes, the header needs {end})")
    if end < data_bytes:
        raise ValueError(f"{data_bytes - end} bytes after the last tensor")


class _Shard:
    """One safetensors file: its parsed header and an open descriptor for positioned reads."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise OtaMergeError(f"{label}: cannot open {path}: {exc.strerror}") from None
        try:
            size = os.fstat(self.fd).st_size
            head = os.pread(self.fd, 8, 0)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise ValueError("header length beyond the end of the file")
            if n > MAX_HEADER:
                raise ValueError(f"header of {n} bytes (the format allows {MAX_HEADER})")
            header = json.loads(os.pread(self.fd, n, 8))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            self.metadata = _metadata(header.pop("__metadata__", None))
            self.data_start = 8 + n
            self.tensors = dict(_entry(name, info) for name, info in header.items())
            _check_layout(self.tensors, size - self.data_start)
        except (ValueError, RecursionError) as exc:  # (RecursionError: absurdly nested JSON)
            os.close(self.fd)
            raise OtaMergeError(f"{label}: {path} is not a valid safetensors file ({exc})") from None

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str, rows: tuple[int, int] | None) -> torch.Tensor:
        dtype, shape, a, b = self.tensors[name]
        if rows is not None and shape:
            row_bytes = (b - a) // shape[0] if shape[0] else 0
            a, b = a + rows[0] * row_bytes, a + rows[1] * row_bytes
            shape = (rows[1] - rows[0], *shape[1:])
        buf = bytearray(b - a)
        view, got = memoryview(buf), 0
        while got < len(buf):  # pread may return fewer bytes than asked
            chunk = os.preadv(self.fd, [view[got:]], self.data_start + a + got)
            if chunk <= 0:
                raise OtaMergeError(f"{self.label}: {self.path} ended while reading tensor {name}")
            got += chunk
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def prefetch(self, name: str) -> None:
        _, _, a, b = self.tensors[name]
        if b > a and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, self.data_start + a, b - a, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        os.close(self.fd)


def _tensor_files(path: Path, label: str) -> dict[str, Path]:
    """Tensor name -> shard for an indexed checkpoint; {} for a single file."""
    if path.is_file():
        return {}
    if not path.is_dir():
        raise OtaMergeError(f"{label}: {path} is neither a folder nor a safetensors file")
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise OtaMergeError(f"{label}: {index} is not a valid index ({exc})") from None
        return {name: path / f for name, f in weight_map.items()}
    if (path / SINGLE_FILE).is_file():
        return {}
    raise OtaMergeError(f"{label}: {path} has neither {SINGLE_FILE} nor {INDEX_FILE}")


# fp32 bytes of one input's row chunk in the streaming merges and FFG: on a 2-core CPU 1 MiB
# was faster than 4 (OTA+FFG 4.1 vs 5.1 s, the FFG sweep 8.7 vs 17.4 s at 0.133B) and held
# 70 MB less (benchmarks/README.md); 0.5 MiB paid more per-chunk overhead than it saved
CHUNK_BYTES = 1 << 20


def row_ranges(shape: tuple[int, ...], chunk_bytes: int) -> list[tuple[int, int]] | None:
    """Row ranges of at most ``chunk_bytes`` fp32 bytes each; None for a 0-D tensor."""
    if not shape:
        return None
    row = 4
    for d in shape[1:]:
        row *= d
    step = max(1, chunk_bytes // max(1, row))
    return [(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def check_compatible(reference: Checkpoint, other: Checkpoint, names: list[str]) -> None:
    """``other`` has every tensor of ``names`` with the reference's shape (headers only)."""
    for name in names:
        if name not in other:
            raise OtaMergeError(f"{other.label}: tensor {name} missing (present in {reference.label})")
        if other.shape(name) != reference.shape(name):
            raise OtaMergeError(f"{other.label}: tensor {name} in {other.file_of(name)} has shape "
                                f"{list(other.shape(name))}, {reference.label} has {list(reference.shape(name))}")
