"""Running an external evaluator (OLMES, lm_eval) as an argument list, with clear errors."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from otamerge.errors import OtaMergeError


def prefix_words(prefix: str | Sequence[str]) -> list[str]:
    """A launcher prefix such as ``conda run -n olmes``, as words (never a shell string)."""
    return shlex.split(prefix) if isinstance(prefix, str) else list(prefix)


def run_evaluator(backend: str, cmd: list[str], model_dir: str | Path, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd``, echo its output to the job's log, and turn a failure into one line:
    the exit code and the last line the evaluator printed, or which setting to change
    when the executable cannot be started."""
    print("running:", shlex.join(cmd), flush=True)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else dict(env))
    except OSError as exc:
        raise OtaMergeError(f"{backend}: cannot run {cmd[0]!r} ({exc.strerror}); set "
                            f"evaluation.{backend}.executable or prefix in the config") from None
    print(res.stdout, res.stderr, sep="\n", flush=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OtaMergeError(f"{backend} exited with {res.returncode} for {model_dir}: {tail[0]}")
