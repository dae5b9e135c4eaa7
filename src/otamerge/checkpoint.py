"""Lazy reading of safetensors checkpoints: one file or shards with an index.

Files are opened once; tensors (or row ranges of them) are read on demand through
safetensors' slices, so no step holds more than the tensor or chunk it works on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from otamerge.errors import OtaMergeError

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
        self._handles: dict[Path, object] = {}
        if self._files:
            keys = {f: set(self._open(f).keys()) for f in dict.fromkeys(self._files.values())}
            for name, f in self._files.items():
                if name not in keys[f]:
                    raise OtaMergeError(f"{self.label}: {f} does not hold tensor {name} listed in its index")
            self._where = dict(self._files)
        else:  # a single file: its own header lists the tensors
            f = self.path if self.path.is_file() else self.path / SINGLE_FILE
            self._where = {n: f for n in self._open(f).keys()}

    def _open(self, f: Path):
        if f not in self._handles:
            if not f.is_file():
                raise OtaMergeError(f"{self.label}: file {f} is missing")
            try:
                self._handles[f] = safe_open(str(f), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise OtaMergeError(f"{self.label}: {f} is not a valid safetensors file ({exc})") from None
        return self._handles[f]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> Path:
        if name not in self._where:
            raise OtaMergeError(f"{self.label}: tensor {name} not found in {self.path}")
        return self._where[name]

    def _slice(self, name: str):
        return self._open(self.file_of(name)).get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self._slice(name).get_dtype()]

    def metadata(self, name: str) -> dict[str, str]:
        return self._open(self.file_of(name)).metadata() or {}

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor, or rows ``start:stop`` of its first dimension."""
        try:
            if rows is None:
                return self._open(self.file_of(name)).get_tensor(name)
            sl = self._slice(name)
            return sl[rows[0] : rows[1]] if len(sl.get_shape()) else sl[:]
        except OtaMergeError:
            raise
        except Exception as exc:
            raise OtaMergeError(f"{self.label}: cannot read tensor {name} from {self.file_of(name)} ({exc})") from None


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


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
