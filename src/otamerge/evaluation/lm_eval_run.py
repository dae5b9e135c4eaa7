"""``python -m otamerge.evaluation.lm_eval_run``: lm_eval's ``run`` for the flags the
lm_eval backend passes, writing the same ``results_*.json`` (and ``samples_*.jsonl``).

Why not the ``lm_eval`` command itself: before every run it indexes the ~27,000 task
YAMLs bundled with lm_eval (8 s on 2 cores, 60% of a demo model's evaluation). Here the
index holds only ``--include_path`` when every requested task is found there, and
lm_eval's own tasks otherwise. A configured ``evaluation.lm_eval.executable`` (an
lm_eval in another environment) is run as it is.
"""

from __future__ import annotations

import argparse
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m otamerge.evaluation.lm_eval_run", description=__doc__)
    ap.add_argument("--model", default="hf")
    ap.add_argument("--model_args", default="")
    ap.add_argument("--tasks", required=True, help="comma-separated task names")
    ap.add_argument("--include_path", action="append", default=[])
    ap.add_argument("--output_path", required=True)
    ap.add_argument("--batch_size", default="1")
    ap.add_argument("--device", default="auto", help="auto: CUDA when a GPU is visible, else the CPU")
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--log_samples", action="store_true")
    ap.add_argument("--apply_chat_template", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    from otamerge.device import pick_device

    tasks = args.tasks.split(",")
    manager = TaskManager(include_path=args.include_path or None, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=args.include_path or None)
    tracker = EvaluationTracker(output_path=args.output_path)
    batch = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = simple_evaluate(model=args.model, model_args=args.model_args, tasks=tasks, batch_size=batch,
                              device=str(pick_device(args.device)), limit=limit, log_samples=args.log_samples,
                              apply_chat_template=args.apply_chat_template,
                              evaluation_tracker=tracker, task_manager=manager)
    samples = results.pop("samples", None) if args.log_samples else None
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"] if samples else ():
        tracker.save_results_samples(task_name=task, samples=samples[task])
    print(make_table(results))


if __name__ == "__main__":
    main()
