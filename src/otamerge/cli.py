"""The ``otamerge`` command line: one subcommand per stage of the workflow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import yaml

from otamerge.errors import OtaMergeError


def _cmd_demo_build(args: argparse.Namespace) -> None:
    from otamerge.demo.build import build_base, build_expert
    from otamerge.demo.settings import expert_config, train_settings

    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    demo, seed = cfg["demo"], cfg["seed"] if args.seed is None else args.seed
    out = Path(args.out)
    common = {"seed": seed, "n_eval": demo["n_eval"], "threads": demo["threads"]}
    build_base(out / "base", settings=train_settings(demo["base"]), arch=demo.get("arch"), **common)
    for name in demo["experts"]:
        build_expert(out / "base", out / "experts" / name, demo["experts"][name]["task"],
                     settings=train_settings(expert_config(demo, name)), **common)
    print(f"demo models written to {out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from otamerge.atomic import write_json
    from otamerge.demo.tasks import TASKS
    from otamerge.evaluation.builtin import evaluate, load_model

    model, tokenizer = load_model(args.model_dir)
    name = args.name or Path(args.model_dir).name
    rows = evaluate(model, tokenizer, args.tasks or list(TASKS), args.n, args.seed, name)
    if args.out:
        write_json(args.out, rows)
    json.dump(rows, sys.stdout, indent=1)
    print()


def _cmd_merge(args: argparse.Namespace) -> None:
    from otamerge.merge import MergeOptions, merge_file

    opts = MergeOptions(device=args.device, chunk_bytes=int(args.chunk_mb * (1 << 20)),
                        out_shard_bytes=int(args.out_shard_size * (1 << 30)), seed=args.seed,
                        progress=not args.quiet)
    out = merge_file(args.config, args.out_dir, opts)
    print(f"merged model written to {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otamerge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-build", help="train the demo base and experts (CPU, minutes)")
    d.add_argument("out", help="output folder (base/ and experts/<name>/ are created in it)")
    d.add_argument("--config", default="config/config.yaml", help="workflow config with a demo section")
    d.add_argument("--seed", type=int, default=None, help="override the config's seed")
    d.set_defaults(func=_cmd_demo_build)

    m = sub.add_parser("merge", help="merge models per a mergekit-style YAML config")
    m.add_argument("config", help="merge config (merge_method, base_model, models, parameters, dtype, ...)")
    m.add_argument("out_dir", help="output model folder (written atomically)")
    m.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    m.add_argument("--chunk-mb", type=float, default=4, help="row chunk size per input, MiB of fp32 (bounds memory)")
    m.add_argument("--out-shard-size", type=float, default=5, help="output shard size, GiB")
    m.add_argument("--seed", type=int, default=0, help="seed of random masks (DARE)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_cmd_merge)

    e = sub.add_parser("evaluate", help="score a model folder on the demo tasks (built-in backend)")
    e.add_argument("model_dir")
    e.add_argument("--name", help="model name in the score rows (default: folder name)")
    e.add_argument("--tasks", nargs="*", help="demo tasks (default: all)")
    e.add_argument("--n", type=int, default=100, help="held-out prompts per task")
    e.add_argument("--seed", type=int, default=0, help="seed of the held-out prompts")
    e.add_argument("--out", help="write the score rows to this JSON file")
    e.set_defaults(func=_cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OtaMergeError as exc:
        print(f"otamerge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
