"""Logging of a workflow job into its own log file."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Iterator

from otamerge.errors import OtaMergeError


@contextlib.contextmanager
def to_file(path: str | Path | None) -> Iterator[None]:
    """Send stdout and stderr (progress bars included) to ``path`` for the block; an error
    ends the log (one line for the engine's own errors, else the traceback) and is re-raised."""
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except OtaMergeError as exc:
            print(f"\nerror: {exc}", file=fh)
            raise
        except BaseException:
            traceback.print_exc(file=fh)
            raise


@contextlib.contextmanager
def job(path: str | Path | None) -> Iterator[None]:
    """The body of a workflow script: logged as ``to_file`` does; when it succeeds the
    process ends at once. A job has nothing left to do by then, and Python's teardown of
    the modules it imported costs 0.5-0.6 s when that is torch, 2 s with transformers
    (benchmarks/job_startup.py; a demo evaluation does 0.6 s of work). Every output is
    closed by then, so only stdio is flushed."""
    with to_file(path):
        yield
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
