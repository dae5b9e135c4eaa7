"""Atomic outputs: write under a temporary name in the same folder, then rename.

An interrupted job then never leaves a path that looks complete; the rename is atomic on
POSIX file systems because source and target share a folder (and so a file system).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from otamerge.errors import OtaMergeError

# a full disk, a full quota, a file size limit (ulimit -f)
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; results are shared files."""
    os.chmod(path, mode & ~_umask())


def check_space(need: int, folder: Path, what: str) -> None:
    """Refuse to start a job whose ``need`` bytes do not fit in ``folder``'s free space."""
    where = folder.absolute()
    while not where.exists():  # (the output folders are made later, and only on success)
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise OtaMergeError(f"{what}: needs {_size(need)} but {where} has only {_size(free)} free")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def _failed(exc: BaseException, final: Path) -> None:
    """Say plainly that the disk filled up while ``final`` was written (its temporary
    output is already removed); other errors propagate unchanged."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        raise OtaMergeError(f"no space left while writing {final} ({exc.strerror}); nothing was written: "
                            "free space (or raise the quota) and rerun") from None


def _clear_stale(final: Path) -> None:
    """Remove what a killed writer of ``final`` left (kill -9 runs no cleanup). One output
    has one writer at a time (Snakemake's lock and job graph), so these are not in use."""
    stale = [p for kind in ("tmp", "old") for p in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*")]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _publish_mode(tmp, 0o777)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _failed(exc, final)
        raise


@contextmanager
def atomic_file(final: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``final``; it replaces ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _publish_mode(Path(tmp), 0o666)
        os.replace(tmp, final)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _failed(exc, final)
        raise


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> torch tensor) as one safetensors file, atomically."""
    from safetensors.torch import save

    with atomic_file(path, "wb") as fh:
        fh.write(save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
