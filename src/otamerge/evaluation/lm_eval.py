"""lm-evaluation-harness (``lm_eval``) as an evaluation backend, pip-installable.

The command is an argument list (no shell): ``[*prefix, executable (default: python -m otamerge.evaluation.lm_eval_run), --model hf,
--model_args pretrained=DIR,..., --tasks T1,T2, --include_path DIR, --output_path OUT,
...]``. Tasks are lm_eval task names, or tasks of a family the workflow builds (the demo's,
a pretrained family's): for those this module writes a task YAML over a local JSONL file
of the family's held-out prompts (no hub access), with the built-in evaluator's
exact-match definition: greedy generation after BOS + prompt (a chat family: the prompt as
a user turn through the chat template, ``--apply_chat_template``), cut at the family's end
token, at most as many new tokens as the builtin evaluator allows, equal to the answer.
Scores come from lm_eval's ``results_*.json``: ``results[task]["metric,filter"]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from otamerge.errors import OtaMergeError
from otamerge.families import get_family
from otamerge.evaluation.external import prefix_words, run_evaluator
from otamerge.evaluation.tidy import score_row

BACKEND = "lm_eval"
# demo tasks get a prefix so they cannot shadow a task of lm_eval's own registry
DEMO_PREFIX = "otamerge_"


def family_tasks(family: str) -> set[str]:
    """The task names of a task family the workflow builds."""
    return set(get_family(family).tasks())


def demo_task_yaml(task: str, data_file: Path, family: str = "tiny") -> dict[str, Any]:
    """An lm_eval task config scoring a family's task by exact match over a local JSONL
    file: greedy generation up to the family's end token, at most as many new tokens as
    the builtin evaluator allows."""
    fam = get_family(family)
    return {
        "task": DEMO_PREFIX + task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "generation_kwargs": {"until": [fam.stop], "max_gen_toks": fam.max_new_tokens(task), "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_demo_tasks(tasks: Sequence[str], n: int, seed: int, out_dir: str | Path, family: str = "tiny") -> Path:
    """Task YAMLs and JSONL files of the family's tasks among ``tasks`` (the same held-out
    prompts the built-in evaluator scores), in ``out_dir`` for ``--include_path``."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    known = family_tasks(family)
    for task in tasks:
        if task not in known:
            continue
        data = out_dir / f"{DEMO_PREFIX}{task}.jsonl"
        with open(data, "w") as fh:
            for prompt, answer in get_family(family).eval_set(task, n, seed):
                fh.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
        # JSON is YAML: no dumper needed, and no question of quoting
        (out_dir / f"{DEMO_PREFIX}{task}.yaml").write_text(json.dumps(demo_task_yaml(task, data, family), indent=1))
    return out_dir


def lm_eval_name(task: str, family: str = "tiny") -> str:
    return DEMO_PREFIX + task if task in family_tasks(family) else task


def lm_eval_command(model_dir: str | Path, tasks: Sequence[str], out_dir: str | Path, *,
                    include_path: Sequence[str | Path] = (), executable: str | None = None,
                    prefix: str | Sequence[str] = (), model: str = "hf",
                    model_args: dict[str, Any] | None = None, batch_size: int | str = 1,
                    device: str | None = None, limit: int | float | None = None,
                    log_samples: bool = False, family: str = "tiny",
                    apply_chat_template: bool = False) -> list[str]:
    """The lm_eval command line for one model and its tasks (a family's tasks by their
    lm_eval names)."""
    if not tasks:
        raise OtaMergeError("lm_eval: no tasks to evaluate")
    args = {"pretrained": str(model_dir), **(model_args or {})}
    for k, v in args.items():  # lm_eval splits --model_args at commas and '='
        if any(c in f"{k}{v}" for c in ",="):
            raise OtaMergeError(f"lm_eval: model argument {k}={v!r} may not contain ',' or '='")
    # default: the lm_eval installed next to otamerge (the `lm-eval` extra), through a
    # runner that skips indexing lm_eval's bundled tasks when only local ones are asked for
    run = [executable] if executable else [sys.executable, "-m", "otamerge.evaluation.lm_eval_run"]
    cmd = [*prefix_words(prefix), *run, "--model", model,
           "--model_args", ",".join(f"{k}={v}" for k, v in args.items()),
           "--tasks", ",".join(lm_eval_name(t, family) for t in tasks), "--output_path", str(out_dir),
           "--batch_size", str(batch_size)]
    for path in include_path:
        cmd += ["--include_path", str(path)]
    for flag, value in (("--device", device), ("--limit", limit)):
        if value is not None:
            cmd += [flag, str(value)]
    if log_samples:  # every prompt's generation, in samples_<task>_*.jsonl next to the results
        cmd.append("--log_samples")
    if apply_chat_template:  # each prompt as a user turn through the tokenizer's chat template
        cmd.append("--apply_chat_template")
    return cmd


def read_results(out_dir: str | Path, model: str, tasks: Sequence[str], family: str = "tiny") -> list[dict]:
    """Tidy rows of every requested task from the newest ``results_*.json`` under
    ``out_dir``: one per metric, named ``metric`` or ``metric:filter`` when the filter is
    not ``none`` (stderr entries dropped)."""
    files = sorted(Path(out_dir).rglob("results_*.json"), key=lambda f: f.name)
    if not files:
        raise OtaMergeError(f"lm_eval: no results_*.json under {out_dir}: the run did not finish")
    try:
        data = json.loads(files[-1].read_text())
        results, samples = data["results"], data.get("n-samples", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise OtaMergeError(f"lm_eval: {files[-1]} is not an lm_eval results file ({exc!r})") from None
    missing = [t for t in tasks if lm_eval_name(t, family) not in results]
    if missing:
        raise OtaMergeError(f"lm_eval: no results for task {', '.join(missing)} in {files[-1]} "
                            f"(found: {', '.join(sorted(results)) or 'none'})")
    rows = []
    for task in tasks:
        name = lm_eval_name(task, family)
        n = (samples.get(name) or {}).get("effective")
        for key, value in results[name].items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            rows.append(score_row(model, task, metric if filt == "none" else f"{metric}:{filt}", value, n, BACKEND))
    return rows


def evaluate(model_dir: str | Path, model: str, tasks: Sequence[str], out_dir: str | Path,
             settings: dict[str, Any], n: int, seed: int, family: str = "tiny") -> list[dict]:
    """Run lm_eval on one model (its output kept in ``out_dir``) and read its scores; a
    family's tasks from local task files (a chat family's prompts through the chat template).

    Runs offline: the hub is never asked (demo tasks read local files, models are local
    folders), and datasets' cache is a temporary folder removed afterwards."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():  # else lm_eval takes the path for a hub repo id
        raise OtaMergeError(f"lm_eval: {model_dir} is not a model folder (no config.json)")
    settings = dict(settings)
    include = [*settings.pop("include_path", [])]
    # the GPU a cluster job got, else the CPU (lm_eval itself would insist on cuda): our
    # runner decides "auto" in its own process, which loads torch anyway (this one need not)
    settings["device"] = settings.get("device") or "auto"
    if settings.get("executable") and settings["device"] == "auto":  # another lm_eval: a device it knows
        from otamerge.device import pick_device
        settings["device"] = str(pick_device("auto"))
    with tempfile.TemporaryDirectory(prefix="otamerge-lm_eval-") as tmp:
        own = bool(set(tasks) & family_tasks(family))
        if own:
            include.append(write_demo_tasks(tasks, n, seed, Path(tmp) / "tasks", family))
        cmd = lm_eval_command(model_dir, tasks, out_dir, include_path=include, family=family,
                              apply_chat_template=own and get_family(family).chat, **settings)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_DATASETS_CACHE": str(Path(tmp) / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
        run_evaluator(BACKEND, cmd, model_dir, env)
    return read_results(out_dir, model, tasks, family)
