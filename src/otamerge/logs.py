"""Logging of a workflow job into its own log file."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def to_file(path: str | Path | None) -> Iterator[None]:
    """Send stdout and stderr (progress bars included) to ``path`` for the block."""
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield
