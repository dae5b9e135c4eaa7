"""OLMES, the paper's evaluator, as an evaluation backend (for GPU clusters).

The command is built as an argument list (no shell): ``[*prefix, executable, --model DIR,
--task T1 T2 ..., --output-dir OUT, ...]``, where ``prefix`` is e.g. ``conda run -n olmes``.
OLMES writes one ``task-NNN-<name>-metrics.json`` per task (a suite also writes one for
its aggregate, under the suite's alias) and ``metrics.json`` once every task is done. A
task's score is ``metrics.primary_score``; its name is ``task_config.metadata.alias``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from otamerge.errors import OtaMergeError
from otamerge.evaluation.external import prefix_words, run_evaluator
from otamerge.evaluation.tidy import score_row

BACKEND = "olmes"


def olmes_command(model_dir: str | Path, tasks: Sequence[str], out_dir: str | Path, *,
                  executable: str = "olmes", prefix: str | Sequence[str] = (), model_type: str = "hf",
                  model_args: dict[str, Any] | None = None, batch_size: int | None = None,
                  gpus: int | None = None, limit: int | float | None = None) -> list[str]:
    """The OLMES command line for one model and its tasks."""
    if not tasks:
        raise OtaMergeError("olmes: no tasks to evaluate")
    cmd = [*prefix_words(prefix), executable, "--model", str(model_dir), "--task", *tasks, "--output-dir", str(out_dir),
           "--model-type", model_type]
    if model_args:
        cmd += ["--model-args", json.dumps(model_args, sort_keys=True)]
    for flag, value in (("--batch-size", batch_size), ("--gpus", gpus), ("--limit", limit)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def read_outputs(out_dir: str | Path, model: str, tasks: Sequence[str]) -> list[dict]:
    """Tidy rows (metric ``primary_score``) for every requested task or suite alias."""
    out_dir = Path(out_dir)
    if not (out_dir / "metrics.json").is_file():
        raise OtaMergeError(f"olmes: {out_dir}/metrics.json is missing: the run did not finish")
    by_alias: dict[str, dict] = {}
    for f in sorted(out_dir.glob("task-*-metrics.json")):
        try:
            data = json.loads(f.read_text())
            alias = (data.get("task_config", {}).get("metadata", {}) or {}).get("alias") or data["task_name"]
            by_alias[alias] = {"score": float(data["metrics"]["primary_score"]),
                               "n": data.get("num_instances"), "file": f.name}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OtaMergeError(f"olmes: {f} is not an OLMES task metrics file ({exc!r})") from None
    missing = [t for t in tasks if t not in by_alias]
    if missing:
        raise OtaMergeError(f"olmes: no metrics for task {', '.join(missing)} in {out_dir} "
                            f"(found: {', '.join(sorted(by_alias)) or 'none'})")
    return [score_row(model, t, "primary_score", by_alias[t]["score"], by_alias[t]["n"], BACKEND) for t in tasks]


def evaluate(model_dir: str | Path, model: str, tasks: Sequence[str], out_dir: str | Path,
             settings: dict[str, Any]) -> list[dict]:
    """Run OLMES on one model (its output kept in ``out_dir``) and read its scores."""
    run_evaluator(BACKEND, olmes_command(model_dir, tasks, out_dir, **settings), model_dir)
    return read_outputs(out_dir, model, tasks)
