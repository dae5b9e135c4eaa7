"""Adam's exp_avg_sq out of sharded training checkpoints, keyed by parameter name.

Two folders, each the output of its library's own tools, hold per-parameter states with
names (unlike a plain ``optimizer.pt``):

- FSDP: a ``torch.distributed.checkpoint`` folder (``.metadata`` plus ``__*_*.distcp``
  shards), as ``dcp.save({"optimizer": get_optimizer_state_dict(...)})`` and accelerate's
  FSDP ``SHARDED_STATE_DICT`` (``optimizer_0/``) write it. Read with DCP's own loader on one
  process (``no_dist``): only the ``exp_avg_sq`` and ``step`` tensors are loaded, each
  whole, whatever the number of ranks that wrote it. DCP keeps its index in a pickle
  (``.metadata``), so it is unpickled here with only DCP's metadata classes, torch.Size,
  dtypes and paths allowed: a checkpoint cannot run code.
- DeepSpeed ZeRO (stages 1-3): DeepSpeed's universal checkpoint, written by its converter
  from a ``global_stepN`` folder of ``*_optim_states.pt`` partitions::

      python -m deepspeed.checkpoint.ds_to_universal --input_folder CKPT/global_stepN \\
          --output_folder UNIVERSAL --inject_missing_state

  ``UNIVERSAL/zero/<name>/exp_avg_sq.pt`` holds each parameter's whole state, read with
  ``torch.load(weights_only=True)``. A ``global_stepN`` folder itself is refused with that
  command (its partitions are flat fp32 buffers whose layout only DeepSpeed knows).

Every model parameter must have a state of its own shape, and every state a parameter.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from otamerge.errors import OtaMergeError

DCP_METADATA = ".metadata"
UNIVERSAL = "zero"  # DeepSpeed's universal checkpoint: zero/<parameter name>/<state>.pt
DS_TO_UNIVERSAL = ("python -m deepspeed.checkpoint.ds_to_universal --input_folder {folder} "
                   "--output_folder {folder}-universal --inject_missing_state")

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
            ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
            ("pathlib", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's metadata classes and plain torch values only (pickle's "restricting globals")."""

    def find_class(self, module: str, name: str):
        if module in _DCP_MODULES:
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # its dataclasses and enums, no functions
                return obj
        elif (module, name) in _ALLOWED:
            return super().find_class(module, name)
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def _reader(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            try:
                with open(folder / DCP_METADATA, "rb") as fh:
                    metadata = _MetadataUnpickler(fh).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                raise OtaMergeError(f"{folder}: unreadable checkpoint metadata ({exc})") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(folder))


def _by_name(keys: list[str], suffix: str, names: set[str]) -> dict[str, str]:
    """{parameter name: key} for the keys ending in ``.suffix`` whose stem ends with a
    parameter's name (``optimizer.state.<name>.exp_avg_sq``; the longest name wins)."""
    out = {}
    for key in keys:
        if not key.endswith("." + suffix):
            continue
        stem = key[: -len(suffix) - 1]
        hits = [n for n in names if stem == n or stem.endswith("." + n)]
        out[max(hits, key=len) if hits else stem] = key
    return out


def dcp_states(folder: str | Path, names: set[str]) -> tuple[dict[str, torch.Tensor], set[int]]:
    """(exp_avg_sq by parameter name, the step counts) of a DCP folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    reader = _reader(folder)
    tensors = {k: m for k, m in reader.read_metadata().state_dict_metadata.items()
               if isinstance(m, TensorStorageMetadata)}
    wanted = _by_name(list(tensors), "exp_avg_sq", names)
    steps = _by_name(list(tensors), "step", names)
    state = {k: torch.empty(tensors[k].size, dtype=tensors[k].properties.dtype)
             for k in [*wanted.values(), *steps.values()]}
    with warnings.catch_warnings():  # one process on purpose: DCP warns that it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {n: state[k] for n, k in wanted.items()}, {int(state[k]) for k in steps.values()}


def universal_states(folder: str | Path) -> tuple[dict[str, torch.Tensor], set[int]]:
    """(exp_avg_sq by parameter name, the step counts) of a DeepSpeed universal checkpoint."""
    out, steps = {}, set()
    for sub in sorted(p for p in (Path(folder) / UNIVERSAL).iterdir() if p.is_dir()):
        if not (sub / "exp_avg_sq.pt").is_file():
            continue
        out[sub.name] = _tensor(sub / "exp_avg_sq.pt")
        if (sub / "step.pt").is_file():
            steps.add(int(_tensor(sub / "step.pt")))
    return out, steps


def _tensor(path: Path) -> torch.Tensor:
    value = torch.load(path, map_location="cpu", weights_only=True)
    return value["param"] if isinstance(value, dict) else value  # the converter stores {"param", "cat_dim"}


def kind(folder: str | Path) -> str | None:
    """dcp, deepspeed-universal, deepspeed (not converted) or None."""
    folder = Path(folder)
    if (folder / DCP_METADATA).is_file():
        return "dcp"
    if (folder / UNIVERSAL).is_dir():
        return "deepspeed-universal"
    if any(folder.glob("*optim_states.pt")):
        return "deepspeed"
    return None


def sharded_moments(folder: str | Path, shapes: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], dict]:
    """(exp_avg_sq by parameter name, record) of a sharded checkpoint folder, every state
    checked against the model's parameters ``shapes``."""
    folder = Path(folder)
    found = kind(folder)
    if found == "deepspeed":
        raise OtaMergeError(f"{folder}: a DeepSpeed ZeRO checkpoint; convert it with DeepSpeed's own tool and "
                            f"give the result: {DS_TO_UNIVERSAL.format(folder=folder)}")
    if found is None:
        raise OtaMergeError(f"{folder}: neither a torch.distributed.checkpoint folder ({DCP_METADATA}) nor a "
                            f"DeepSpeed universal checkpoint ({UNIVERSAL}/)")
    moments, steps = dcp_states(folder, set(shapes)) if found == "dcp" else universal_states(folder)
    missing = [n for n in shapes if n not in moments]
    extra = [n for n in moments if n not in shapes]
    if missing or extra:
        raise OtaMergeError(f"{folder}: {len(moments)} states for {len(shapes)} parameters"
                            + (f"; no exp_avg_sq for {missing[0]}" if missing else "")
                            + (f"; {extra[0]} is no parameter of the model" if extra else ""))
    for n, v in moments.items():
        if v.shape != shapes[n]:
            raise OtaMergeError(f"{folder}: exp_avg_sq of {n} has shape {list(v.shape)}, the parameter "
                                f"{list(shapes[n])}")
    record = {"optimizer": {"dcp": "torch.distributed.checkpoint",
                            "deepspeed-universal": "DeepSpeed universal checkpoint"}[found],
              "layout": "by name"}
    if len(steps) == 1:
        record["step"] = steps.pop()
    return {n: moments[n].float().contiguous() for n in shapes}, record
