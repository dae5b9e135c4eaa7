"""``otamerge`` subcommands: scores of a model folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from otamerge.cli.common import pairs


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from otamerge.demo.tasks import TASKS
    from otamerge.evaluation.builtin import evaluate, load_model

    model, tokenizer = load_model(args.model_dir)
    name = args.name or Path(args.model_dir).name
    _write_rows(evaluate(model, tokenizer, args.tasks or list(TASKS), args.n, args.seed, name), args.out)


def _write_rows(rows: list[dict], out: str | None) -> None:
    from otamerge.io.atomic import write_json

    if out:
        write_json(out, rows)
    json.dump(rows, sys.stdout, indent=1)
    print()


def _cmd_perplexity(args: argparse.Namespace) -> None:
    from otamerge.evaluation import perplexity
    from otamerge.evaluation.builtin import load_model

    model, tokenizer = load_model(args.model_dir)
    texts = pairs(args.text, "--text")
    rows = perplexity.evaluate(model, tokenizer, texts, args.name or Path(args.model_dir).name,
                               args.max_length, args.stride)
    _write_rows(rows, args.out)


def add_commands(sub) -> None:
    """Scores of a model folder."""
    e = sub.add_parser("evaluate", help="score a model folder on the demo tasks (built-in backend)")
    e.add_argument("model_dir")
    e.add_argument("--name", help="model name in the score rows (default: folder name)")
    e.add_argument("--tasks", nargs="*", help="demo tasks (default: all)")
    e.add_argument("--n", type=int, default=100, help="held-out prompts per task")
    e.add_argument("--seed", type=int, default=0, help="seed of the held-out prompts")
    e.add_argument("--out", help="write the score rows to this JSON file")
    e.set_defaults(func=_cmd_evaluate)

    pp = sub.add_parser("perplexity", help="perplexity of a model on text files (sliding window)")
    pp.add_argument("model_dir")
    pp.add_argument("--text", nargs="+", required=True, metavar="NAME=FILE", help="named text files")
    pp.add_argument("--name", help="model name in the score rows (default: folder name)")
    pp.add_argument("--max-length", type=int, help="window length (default: the model's positions)")
    pp.add_argument("--stride", type=int, help="tokens scored per later window (default: half the window)")
    pp.add_argument("--out", help="write the score rows to this JSON file")
    pp.set_defaults(func=_cmd_perplexity)
